"""The Redis job store's Lua scripts: every multi-key check-and-set, atomic on the server.

Each script gets the namespace's key prefix as ARGV[1] (`cortex:{namespace}:`) and builds its
keys from it. All of a namespace's keys share the `{namespace}` hash tag, so on a cluster they
live on one slot and a script may touch any of them (a single server has no such constraint).

Key layout under the prefix (see redis_store.py for who reads what):
  run:<id>          hash: the request, status, attempt, lease, outcome; `member` = "<position>:<id>"
  status:<status>   zset per status, score created_at, member "<position>:<id>" (so equal scores
                    order by submission); status:pending orders the queue
  queue             stream, consumer group `workers`, entries {run = <id>}: one per submit or
                    re-queue; each store instance reads it as a consumer (see CLAIM)
  runs              zset of every run, same scores and members: list_runs without a status
  leases            zset of processing runs, score lease_until (caller's clock), member <id>
  expiries          zset of terminal runs, score expires_at, member "<position>:<id>"
  events:<id>       stream of a generator run's chunks, entry id "<seq>-1", field c = the chunk
  idem:<key>        string: the run id an idempotency key was first used for
  delivery:<id>     hash: one webhook delivery (the outbox)
  deliveries        zset of pending deliveries, score next_attempt_at, member <delivery id>
  position          counter behind members' positions
  cancelled         pub/sub channel: ids of runs cancelled, for the replica running them

Times are the caller's (UNIX seconds as decimal strings), so tests can set the clock; only the
Redis expiry of a terminal run's keys (PEXPIRE, its TTL) runs on the server's own clock.
"""

from __future__ import annotations

GROUP = "workers"  # the consumer group reading each namespace's queue

# Shared helpers, prepended to each script.
_LIB = r"""
local P = ARGV[1]
local TERMINAL = {completed = true, failed = true, cancelled = true}
local STATUSES = {'pending', 'processing', 'completed', 'failed', 'cancelled'}
local QUEUE, GROUP = P .. 'queue', 'workers'

local function run_key(id) return P .. 'run:' .. id end

local function id_of(member) return string.sub(member, string.find(member, ':', 1, true) + 1) end

-- Delete a run and everything that hangs off it, from every index.
local function delete_run(id)
  local r = run_key(id)
  local member, delivery, idem = unpack(redis.call('HMGET', r, 'member', 'delivery', 'idempotency_key'))
  if member then
    redis.call('ZREM', P .. 'runs', member)
    redis.call('ZREM', P .. 'expiries', member)
    for _, status in ipairs(STATUSES) do redis.call('ZREM', P .. 'status:' .. status, member) end
  end
  if delivery then
    redis.call('DEL', P .. 'delivery:' .. delivery)
    redis.call('ZREM', P .. 'deliveries', delivery)
  end
  if idem and redis.call('GET', P .. 'idem:' .. idem) == id then redis.call('DEL', P .. 'idem:' .. idem) end
  redis.call('ZREM', P .. 'leases', id)
  redis.call('DEL', r, P .. 'events:' .. id)
end

-- A new run from field/value pairs ARGV[first..]; its status and attempt come with them.
local function insert(id, created_at, status, first)
  local r = run_key(id)
  local position = redis.call('INCR', P .. 'position')
  local member = string.format('%015d', position) .. ':' .. id
  local fields = {}
  for i = first, #ARGV do fields[#fields + 1] = ARGV[i] end
  redis.call('HSET', r, 'member', member, unpack(fields))
  redis.call('ZADD', P .. 'runs', created_at, member)
  redis.call('ZADD', P .. 'status:' .. status, created_at, member)
  return member
end

-- Move a run's member from one status index to another.
local function move(id, from, to)
  local r = run_key(id)
  local member, created_at = unpack(redis.call('HMGET', r, 'member', 'created_at'))
  redis.call('ZREM', P .. 'status:' .. from, member)
  redis.call('ZADD', P .. 'status:' .. to, created_at, member)
  redis.call('HSET', r, 'status', to)
  return member
end

-- End a run: outcome fields, indexes, its webhook queued, and its keys set to expire.
-- o: status, now, expires_at, ttl_ms, delivery_id ('' = no webhook), payload, then fields.
local function terminate(id, from, o)
  local r = run_key(id)
  local member = move(id, from, o.status)
  redis.call('HDEL', r, 'lease_until', 'result_json', 'error_type', 'error_message')
  redis.call('HSET', r, 'completed_at', o.now, 'expires_at', o.expires_at, 'run_time_ms', o.run_time_ms)
  if o.result_json then redis.call('HSET', r, 'result_json', o.result_json) end
  if o.error_type then redis.call('HSET', r, 'error_type', o.error_type, 'error_message', o.error_message) end
  redis.call('ZREM', P .. 'leases', id)
  redis.call('ZADD', P .. 'expiries', o.expires_at, member)
  local keys = {r, P .. 'events:' .. id}
  local url, secret, idem = unpack(redis.call('HMGET', r, 'webhook_url', 'webhook_secret', 'idempotency_key'))
  if url then
    local d = P .. 'delivery:' .. o.delivery_id
    redis.call('HSET', d, 'run_id', id, 'url', url, 'payload', o.payload, 'attempts', 0,
      'status', 'pending', 'next_attempt_at', o.now)
    if secret then redis.call('HSET', d, 'cerebrium_secret', secret) end
    redis.call('ZADD', P .. 'deliveries', o.now, o.delivery_id)
    redis.call('HSET', r, 'delivery', o.delivery_id)
    keys[#keys + 1] = d
  end
  if idem then keys[#keys + 1] = P .. 'idem:' .. idem end
  -- The server's own clock from here: the result TTL, counted from now, as Redis expiry.
  for _, key in ipairs(keys) do redis.call('PEXPIRE', key, o.ttl_ms) end
  if o.status == 'cancelled' then redis.call('PUBLISH', P .. 'cancelled', id) end
end

-- ARGV[first..first+8] as the outcome table of terminate().
local function outcome_at(first)
  local a = function(i) local v = ARGV[first + i] if v == '' then return false end return v end
  return {status = ARGV[first], now = ARGV[first + 1], expires_at = ARGV[first + 2],
    ttl_ms = ARGV[first + 3], delivery_id = ARGV[first + 4], payload = ARGV[first + 5],
    run_time_ms = ARGV[first + 6], result_json = a(7), error_type = a(8), error_message = ARGV[first + 9]}
end

-- A run's fields plus its delivery's status and attempts; false when it is gone.
local function fields_of(id)
  local fields = redis.call('HGETALL', run_key(id))
  if #fields == 0 then return false end
  local delivery = redis.call('HGET', run_key(id), 'delivery')
  if delivery then
    local status, attempts = unpack(redis.call('HMGET', P .. 'delivery:' .. delivery, 'status', 'attempts'))
    if status then
      fields[#fields + 1] = 'webhook_status'
      fields[#fields + 1] = status
      fields[#fields + 1] = 'webhook_attempts'
      fields[#fields + 1] = attempts
    end
  end
  return fields
end

-- The group is made at open(); made again (from the stream's start) if it was lost meanwhile.
local function ensure_group()
  local made = redis.pcall('XGROUP', 'CREATE', QUEUE, GROUP, '0', 'MKSTREAM')
  if type(made) == 'table' and made.err and not string.find(made.err, 'BUSYGROUP', 1, true) then
    error(made)
  end
end

-- One entry of the queue for `consumer`: `from` '0' re-reads its own pending entries (handed to it
-- by XAUTOCLAIM), '>' reads a new one. The entry id, or nil.
local function read_entry(consumer, from)
  local args = {'XREADGROUP', 'GROUP', GROUP, consumer, 'COUNT', 1, 'STREAMS', QUEUE, from}
  local reply = redis.pcall(unpack(args))
  if type(reply) == 'table' and reply.err then
    if not string.find(reply.err, 'NOGROUP', 1, true) then error(reply) end
    ensure_group()
    reply = redis.call(unpack(args))
  end
  if not reply or #reply[1][2] == 0 then return nil end
  return reply[1][2][1][1]
end

-- Put a run (back) in line: the pending index orders it, a new stream entry lets one claim take it.
local function enqueue(id)
  redis.call('XADD', QUEUE, '*', 'run', id)
end
"""

# ARGV: prefix, id, created_at, idempotency key ('' none), body hash, max_pending, fields...
# Returns {code, run id}: 1 created, 0 the key's run (same body), 2 conflict, 3 overloaded.
SUBMIT = (
    _LIB
    + r"""
local id, created_at, key, body_hash, max_pending = ARGV[2], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
if key ~= '' then
  local existing = redis.call('GET', P .. 'idem:' .. key)
  if existing then
    local expires_at, hash = unpack(redis.call('HMGET', run_key(existing), 'expires_at', 'body_hash'))
    local status = redis.call('HGET', run_key(existing), 'status')
    if not status then
      redis.call('DEL', P .. 'idem:' .. key)  -- its run expired in Redis: the key is free
    elseif expires_at and tonumber(expires_at) <= tonumber(created_at) then
      delete_run(existing)  -- past its TTL it answers 404, so the key is free again
    elseif (hash or '') == body_hash then
      return {0, existing}
    else
      return {2, existing}
    end
  end
end
local pending = redis.call('ZCARD', P .. 'status:pending')
if pending >= max_pending then return {3, tostring(pending)} end
insert(id, created_at, 'pending', 7)
enqueue(id)
if key ~= '' then redis.call('SET', P .. 'idem:' .. key, id, 'NX') end
return {1, id}
"""
)

# ARGV: prefix, now, lease_until, consumer, most entries to read. The oldest pending run, now
# processing, as {id, fields}; false when the queue is empty.
#
# Each entry read (this consumer's own pending ones first, then new ones) is acknowledged and
# deleted in this same script, so no entry stays in a live consumer's PEL. An entry is a turn at
# the queue, not a promise of its own run: it claims the oldest pending run (by created_at, ties in
# submission order), which is its own run unless runs were submitted out of created order or
# re-queued. An entry of a run cancelled meanwhile finds the queue shorter: when nothing is pending
# it is dropped and the next is read. Entries never fall short of pending runs: every submit and
# re-queue adds one, and only a claim removes one.
CLAIM = (
    _LIB
    + r"""
local consumer = ARGV[4]
for _ = 1, tonumber(ARGV[5]) do
  local entry = read_entry(consumer, '0') or read_entry(consumer, '>')
  if not entry then return false end
  redis.call('XACK', QUEUE, GROUP, entry)
  redis.call('XDEL', QUEUE, entry)
  local top = redis.call('ZRANGE', P .. 'status:pending', 0, 0)[1]
  if top then
    local id = id_of(top)
    move(id, 'pending', 'processing')
    local r = run_key(id)
    redis.call('HINCRBY', r, 'attempt', 1)
    redis.call('HSET', r, 'started_at', ARGV[2], 'lease_until', ARGV[3], 'owner', consumer, 'entry', entry)
    redis.call('ZADD', P .. 'leases', ARGV[3], id)
    redis.call('DEL', P .. 'events:' .. id)  -- a new attempt restarts the stream
    return {id, fields_of(id)}
  end
end
return false
"""
)

# ARGV: prefix, id, attempt, lease_until. 1 when the attempt is current and its lease extended.
HEARTBEAT = (
    _LIB
    + r"""
local id = ARGV[2]
local status, attempt = unpack(redis.call('HMGET', run_key(id), 'status', 'attempt'))
if status ~= 'processing' or attempt ~= ARGV[3] then return 0 end
redis.call('HSET', run_key(id), 'lease_until', ARGV[4])
redis.call('ZADD', P .. 'leases', ARGV[4], id)
return 1
"""
)

# ARGV: prefix, id, attempt, first seq, chunks... 1 when recorded, 0 for a stale attempt.
APPEND_EVENTS = (
    _LIB
    + r"""
local id = ARGV[2]
local status, attempt = unpack(redis.call('HMGET', run_key(id), 'status', 'attempt'))
if status ~= 'processing' or attempt ~= ARGV[3] then return 0 end
local key = P .. 'events:' .. id
-- Entry ids are <seq>-1, so XRANGE finds a seq directly; a chunk already there (a retried
-- append) is skipped, as the stream's ids must grow.
local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
local next_seq = 0
if #last > 0 then next_seq = tonumber(string.match(last[1][1], '^(%d+)')) + 1 end
local seq = tonumber(ARGV[4])
for i = 5, #ARGV do
  if seq >= next_seq then redis.call('XADD', key, tostring(seq) .. '-1', 'c', ARGV[i]) end
  seq = seq + 1
end
return 1
"""
)

# ARGV: prefix, id, expected status, expected attempt, lease must be before ('' any), then the
# outcome (see outcome_at). Ends the run if it is still as the caller saw it: its fields after,
# else 0.
TERMINATE = (
    _LIB
    + r"""
local id = ARGV[2]
local status, attempt, lease = unpack(redis.call('HMGET', run_key(id), 'status', 'attempt', 'lease_until'))
if not status or status ~= ARGV[3] or attempt ~= ARGV[4] then return 0 end
if ARGV[5] ~= '' and not (lease and tonumber(lease) < tonumber(ARGV[5])) then return 0 end
terminate(id, status, outcome_at(6))
return fields_of(id)
"""
)

# ARGV: prefix, id, created_at, then the outcome (see outcome_at), then fields. A run that ran
# elsewhere, stored terminal with its webhook queued.
RECORD_FINISHED = (
    _LIB
    + r"""
local id = ARGV[2]
if redis.call('EXISTS', run_key(id)) == 1 then return 0 end
insert(id, ARGV[3], 'processing', 14)
terminate(id, 'processing', outcome_at(4))
return 1
"""
)

# ARGV: prefix, now ('' only the queue's safety net), max_attempts, consumer, orphan idle ms,
# limit. Returns {requeued, ids}:
# processing runs whose lease ran out (caller's clock) before their last attempt are re-queued,
# the ids of those out of attempts are for the caller to fail (it builds their webhook payload).
#
# The stream's own safety net runs here too, on the server's clock: entries idle longer than
# the orphan time in another consumer's PEL (a reader that died between XREADGROUP and XACK; this
# store's claims never leave one) are taken over by XAUTOCLAIM, for this consumer's next claim;
# consumers with nothing pending and idle that long are removed; and should entries ever be
# fewer than pending runs (a write lost with the server), entries are added.
RECOVER = (
    _LIB
    + r"""
local now, max_attempts, consumer = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local orphan_ms, limit = tonumber(ARGV[5]), tonumber(ARGV[6])
local taken = redis.pcall('XAUTOCLAIM', QUEUE, GROUP, consumer, orphan_ms, '0-0', 'COUNT', limit)
if type(taken) == 'table' and taken.err then
  if not string.find(taken.err, 'NOGROUP', 1, true) then error(taken) end
  ensure_group()  -- lost with its stream (a write lost with the server): a new group has no PEL
end
for _, info in ipairs(redis.call('XINFO', 'CONSUMERS', QUEUE, GROUP)) do
  local c = {}
  for i = 1, #info, 2 do c[info[i]] = info[i + 1] end
  if c.name ~= consumer and c.pending == 0 and c.idle > orphan_ms then
    redis.call('XGROUP', 'DELCONSUMER', QUEUE, GROUP, c.name)
  end
end
local missing = redis.call('ZCARD', P .. 'status:pending') - redis.call('XLEN', QUEUE)
for _ = 1, missing do redis.call('XADD', QUEUE, '*', 'run', '') end

local requeued, out_of_attempts = 0, {}
if ARGV[2] == '' then return {requeued, out_of_attempts} end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'leases', '-inf', '(' .. ARGV[2], 'LIMIT', 0, limit)) do
  local r = run_key(id)
  local status, attempt, lease = unpack(redis.call('HMGET', r, 'status', 'attempt', 'lease_until'))
  if status ~= 'processing' or not lease then
    redis.call('ZREM', P .. 'leases', id)  -- gone or ended: a stale index entry
  elseif tonumber(lease) < now then
    if tonumber(attempt) >= max_attempts then
      out_of_attempts[#out_of_attempts + 1] = id
    else
      move(id, 'processing', 'pending')
      redis.call('HDEL', r, 'started_at', 'lease_until', 'owner', 'entry')
      redis.call('ZREM', P .. 'leases', id)
      enqueue(id)
      requeued = requeued + 1
    end
  end
end
return {requeued, out_of_attempts}
"""
)

# ARGV: prefix, now, limit, leased_until. Due deliveries, leased: a list of flat field lists.
CLAIM_DELIVERIES = (
    _LIB
    + r"""
local due = redis.call('ZRANGEBYSCORE', P .. 'deliveries', '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
local claimed = {}
for _, delivery in ipairs(due) do
  local d = P .. 'delivery:' .. delivery
  if redis.call('EXISTS', d) == 0 then
    redis.call('ZREM', P .. 'deliveries', delivery)  -- expired with its run
  else
    redis.call('ZADD', P .. 'deliveries', ARGV[4], delivery)
    redis.call('HSET', d, 'next_attempt_at', ARGV[4])
    local fields = redis.call('HGETALL', d)
    fields[#fields + 1] = 'delivery_id'
    fields[#fields + 1] = delivery
    claimed[#claimed + 1] = fields
  end
end
return claimed
"""
)

# ARGV: prefix, delivery id, attempts, status, next_attempt_at ('' unchanged), error ('' none).
RECORD_DELIVERY = (
    _LIB
    + r"""
local d = P .. 'delivery:' .. ARGV[2]
if redis.call('EXISTS', d) == 0 then return 0 end
redis.call('HSET', d, 'attempts', ARGV[3], 'status', ARGV[4])
if ARGV[6] ~= '' then redis.call('HSET', d, 'last_error', ARGV[6])
else redis.call('HDEL', d, 'last_error') end
if ARGV[5] ~= '' then redis.call('HSET', d, 'next_attempt_at', ARGV[5]) end
if ARGV[4] == 'pending' then
  redis.call('ZADD', P .. 'deliveries', redis.call('HGET', d, 'next_attempt_at'), ARGV[2])
else
  redis.call('ZREM', P .. 'deliveries', ARGV[2])
end
return 1
"""
)

# ARGV: prefix, id. The run's fields plus its delivery's status and attempts, read together.
GET = (
    _LIB
    + r"""
return fields_of(ARGV[2])
"""
)

# ARGV: prefix, now, limit. Delete terminal runs whose expires_at <= now; how many.
SWEEP = (
    _LIB
    + r"""
local expired = redis.call('ZRANGEBYSCORE', P .. 'expiries', '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
for _, member in ipairs(expired) do
  local id = id_of(member)
  delete_run(id)
  -- Its hash may already be gone (Redis expired it): clear the indexes by member anyway.
  redis.call('ZREM', P .. 'runs', member)
  redis.call('ZREM', P .. 'expiries', member)
  for _, status in ipairs(STATUSES) do redis.call('ZREM', P .. 'status:' .. status, member) end
end
return #expired
"""
)
