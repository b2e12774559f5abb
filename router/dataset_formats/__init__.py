"""Readers for each routing-dataset file format, behind one validating builder.

Formats (``source=None`` detects them from the extension, then the first byte):

* ``routerbench`` -- ``.csv`` with RouterBench's columns: ``sample_id``, ``prompt`` (a Python
  list literal, parsed with :func:`ast.literal_eval`, elements joined by a newline),
  ``eval_name`` (task), one quality column per model, ``<model>|total_cost`` (USD per call),
  ``<model>|model_response`` (list literal) and ``oracle_model_to_route_to`` (ignored: it is
  recomputed from the matrices). An unnamed first column is the row index.
* ``routerbench-pickle`` -- RouterBench's original ``routerbench_0shot.pkl`` (a pandas
  DataFrame with the same columns), read with :func:`pandas.read_pickle`. Unpickling runs
  code from the file: only load pickles you trust.
* ``routerdc`` -- ``.json``: a list of ``{"question", "scores": {model: q}, "cluster_id"?}``;
  the task comes from the file name (``gsm8k-train.json`` -> ``gsm8k``).
* ``jsonl`` -- one record per line: ``{"id"?, "prompt", "task"?, "scores": {model: q},
  "costs"?: {model: usd}, "responses"?: {model: text}}`` (see data/README.md).

Costs: a model whose costs the file gives keeps them, a missing cell stays NaN (evaluation then
uses that model's mean cost). A model the file gives no cost for at all is priced by the model
catalogue: ``price_in * ceil(len(prompt) / 4) + price_out * out_tokens`` where ``out_tokens``
is ``ceil(len(response) / 4)`` when the file has the response, else the catalogue's
``typical_output_tokens``. Missing quality cells are NaN (see :mod:`router.dataset`).

Columns or fields the loader does not recognise raise :class:`DatasetError` listing them;
``strict=False`` turns that into a warning and ignores them. Every problem raises
:class:`DatasetError` naming the file and the row, line or record.

Modules: :mod:`~router.dataset_formats.loader` (detection and dispatch),
:mod:`~router.dataset_formats.validation` (the shared checks, cost filling and
:class:`DatasetError`), :mod:`~router.dataset_formats.routerbench` (CSV and pickle) and
:mod:`~router.dataset_formats.records` (RouterDC JSON list and JSONL).
"""

from router.dataset_formats.loader import detect_format, read_file
from router.dataset_formats.validation import (
    SPLIT_TOKEN,
    DatasetError,
    Label,
    task_from_filename,
)

__all__ = ["SPLIT_TOKEN", "DatasetError", "Label", "detect_format", "read_file",
           "task_from_filename"]
