"""Lua scripts of :class:`router.state.keys_redis.RedisKeyStore` (each one atomic in Redis).

Every script that changes a key's spend or reservations takes an operation id and records
it (``<prefix>:spend-op:<id>``) in the same step, so a re-sent operation is applied once.
"""

#: reserve once per op id (KEYS: key, held ledger, op record; ARGV: amount, budget, key
#: hash, record ttl); a re-sent op gets its first answer: {held?, spent, reserved}
RESERVE = """
local rec = redis.call('GET', KEYS[3])
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
if rec then return {tonumber(rec), tostring(spent), tostring(reserved)} end
local amount = tonumber(ARGV[1])
if spent + reserved + amount > tonumber(ARGV[2]) + 1e-12 then
  redis.call('SET', KEYS[3], '0', 'EX', ARGV[4])
  return {0, tostring(spent), tostring(reserved)}
end
redis.call('HINCRBYFLOAT', KEYS[1], 'reserved', ARGV[1])
redis.call('HINCRBYFLOAT', KEYS[2], ARGV[3], ARGV[1])
redis.call('SET', KEYS[3], '1', 'EX', ARGV[4])
return {1, tostring(spent), tostring(reserved + amount)}
"""

#: apply one change at most once: key hash ``kh`` (its hash ``key``), the held ledger, the
#: op record, spent delta, reserved delta (a string, applied with ``sign``), mode. Modes:
#: ``once`` (a settle or release), ``hold`` (a reservation served locally: held unless its
#: record says it already is), ``drop`` (a reservation refused locally: given back if its
#: record says it was held). Returns whether it changed anything.
APPLY_FN = """
local function apply_op(key, held, op, kh, ds, dr, mode, ttl)
  local rec = redis.call('GET', op)
  local sign, final = '', '1'
  local apply
  if mode == 'once' then apply = not rec
  elseif mode == 'hold' then apply = rec ~= '1'
  else apply = rec == '1'; sign = '-'; final = '0' end
  if apply then
    if tonumber(ds) ~= 0 then redis.call('HINCRBYFLOAT', key, 'spent', ds) end
    if tonumber(dr) ~= 0 then
      redis.call('HINCRBYFLOAT', key, 'reserved', sign .. dr)
      redis.call('HINCRBYFLOAT', held, kh, sign .. dr)
    end
  end
  if apply or rec ~= final then redis.call('SET', op, final, 'EX', ttl) end
  return apply
end
"""

#: one operation (KEYS: key, held ledger, op record; ARGV: spent delta, reserved delta, key
#: hash, record ttl, mode); returns {applied, spent, reserved}
APPLY = APPLY_FN + """
local applied = apply_op(KEYS[1], KEYS[2], KEYS[3], ARGV[3], ARGV[1], ARGV[2], ARGV[5], ARGV[4])
local h = redis.call('HMGET', KEYS[1], 'spent', 'reserved')
return {applied and 1 or 0, h[1] or '0', h[2] or '0'}
"""

#: a batch of pushed operations in one round trip (KEYS[1]: held ledger; ARGV: key prefix,
#: op record prefix, record ttl, then op id, key hash, spent delta, reserved delta, mode per
#: operation; the keys are derived, so a standalone Redis). Returns {key hash, spent,
#: reserved} per key touched.
APPLY_MANY = APPLY_FN + """
local seen, out = {}, {}
for i = 4, #ARGV, 5 do
  local kh = ARGV[i + 1]
  apply_op(ARGV[1] .. kh, KEYS[1], ARGV[2] .. ARGV[i], kh, ARGV[i + 2], ARGV[i + 3],
           ARGV[i + 4], ARGV[3])
  seen[kh] = true
end
for kh, _ in pairs(seen) do
  local h = redis.call('HMGET', ARGV[1] .. kh, 'spent', 'reserved')
  table.insert(out, {kh, h[1] or '0', h[2] or '0'})
end
return out
"""
#: operations per pushed batch
PUSH_BATCH = 256

#: give back what a replica that died held (its ledger ``KEYS[1]``: key hash -> amount),
#: once per life of the replica (``KEYS[2]`` holds the life that did it: ARGV[2]);
#: ARGV[1] is the key prefix (``<prefix>:key:``)
RELEASE_LEDGER = """
if redis.call('GET', KEYS[2]) == ARGV[2] then return 0 end
local held = redis.call('HGETALL', KEYS[1])
for i = 1, #held, 2 do
  local amount = tonumber(held[i + 1])
  if amount and amount > 0 then
    redis.call('HINCRBYFLOAT', ARGV[1] .. held[i], 'reserved', -amount)
  end
end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
return #held / 2
"""


RATE = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
if n > tonumber(ARGV[1]) then return 0 end
return 1
"""


#: outcome records and the spend they carry, in one atomic step (the outcome writer's batch):
#: KEYS[1] stream, KEYS[2] held ledger; ARGV: key prefix, op record prefix, record ttl,
#: acked ttl, maxlen (0: none), number of acked op ids, those ids (their records' expiry is
#: cut), then per event: its JSON, its number of settles, per settle: op id, key hash, spent,
#: reserved delta. A re-sent batch adds the records again (readers deduplicate by request id)
#: but charges each settle once.
RECORD = APPLY_FN + """
local i = 7 + tonumber(ARGV[6])
for j = 7, i - 1 do redis.call('EXPIRE', ARGV[2] .. ARGV[j], ARGV[4]) end
local maxlen = tonumber(ARGV[5])
while i <= #ARGV do
  if maxlen > 0 then redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', 'e', ARGV[i])
  else redis.call('XADD', KEYS[1], '*', 'e', ARGV[i]) end
  local n = tonumber(ARGV[i + 1])
  i = i + 2
  for _ = 1, n do
    apply_op(ARGV[1] .. ARGV[i + 1], KEYS[2], ARGV[2] .. ARGV[i], ARGV[i + 1], ARGV[i + 2],
             ARGV[i + 3], 'once', ARGV[3])
    i = i + 4
  end
end
return 1
"""
