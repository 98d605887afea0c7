"""The Lua scripts behind every job state change (``bge_m3.jobs``): each runs atomically in Redis.

KEYS and ARGV are documented above each script; a script that may write several keys does its
only fallible write first, because Redis does not roll a script back when a command fails.
"""
from __future__ import annotations

CREATE = """
local function refused(reply)
  if ARGV[8] == '1' then
    redis.call('RPUSH', KEYS[3], 'refused')
    redis.call('EXPIRE', KEYS[3], 60)
  end
  return reply
end
if tonumber(ARGV[5]) > 0 then
  local depth = redis.pcall('LLEN', KEYS[2])
  if type(depth) == 'table' or depth >= tonumber(ARGV[5]) then return refused(depth) end
end
if ARGV[4] ~= '' then
  local pushed = redis.pcall('LPUSH', KEYS[2], ARGV[4])
  if type(pushed) == 'table' then return refused(pushed) end
end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'status', 'queued', 'created_at', ARGV[2], 'owner', ARGV[3],
           'params', ARGV[6], 'attempts', 0)
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[1], 'message', ARGV[4])
  redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
end
if ARGV[8] == '1' then redis.call('HSET', KEYS[1], 'notify', '1') end
redis.call('EXPIRE', KEYS[1], ARGV[7])
return -1
"""
"""KEYS: job hash, queue list, done list, waiting set. ARGV: id, created_at, owner, message ('' = none), max
queued (0 = no bound), params JSON, ttl, notify ('1': push to the done list when the job ends).
Returns -1 when created, else the queue depth that refused it, or the error of an unusable
queue key. The message goes first: if the queue is unusable nothing of the job is written. The
record keeps a copy of the message until the job starts, so a cancel can take it off the queue. A
refused notify job gets 'refused' on its done list, so a BLPOP sent with it returns at once. A job
sent with a message joins the waiting set (id scored by created_at) until a delivery claims it
(``SWEEP``)."""

START = """
redis.call('ZREM', KEYS[3], ARGV[7])  -- delivered: whatever comes next, its message was not lost
local s = redis.call('HGET', KEYS[1], 'status')
if not s then return {'missing', 0} end
if s ~= 'queued' and s ~= 'running' then return {s, 0} end
if ARGV[4] ~= '' and not redis.call('SET', KEYS[2], ARGV[6], 'NX', 'EX', ARGV[4]) then
  if s ~= 'running' or redis.call('GET', KEYS[2]) ~= ARGV[6] then return {'leased', 0} end
  -- This delivery's own claim, whose reply was lost: the same answer again, no new attempt.
  return {'running', tonumber(redis.call('HGET', KEYS[1], 'attempts')),
          redis.call('HGET', KEYS[1], 'params') or '', redis.call('HGET', KEYS[1], 'created_at')}
end
local n = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if tonumber(n) > tonumber(ARGV[2]) then return {'exhausted', n} end
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1], 'worker', ARGV[3])
redis.call('HDEL', KEYS[1], 'message')
local keep = tonumber(ARGV[5])
if keep > 0 then
  local ttl = redis.call('TTL', KEYS[1])
  if ttl >= 0 and ttl < keep then redis.call('EXPIRE', KEYS[1], keep) end
end
return {'running', n, redis.call('HGET', KEYS[1], 'params') or '', redis.call('HGET', KEYS[1], 'created_at')}
"""
"""KEYS: job hash, lease key, waiting set. ARGV: started_at, max attempts, worker, lease ttl ('' =
no lease), seconds the record must at least live on once running (0: as it is), the lease's
value, the job's id (leaves the waiting set).
Returns {state, attempt[, params, created_at]}: 'running', 'leased', 'exhausted', or the
terminal or 'missing' state that means skip. Claiming again with the lease's own value (a retry
after a lost reply) answers 'running' again without counting another attempt."""

FINISH = """
local s = redis.call('HGET', KEYS[1], 'status')
if not s or s == 'succeeded' or s == 'failed' or s == 'cancelled' then
  if ARGV[4] == 'staged' then redis.call('DEL', KEYS[4]) end
  redis.call('DEL', KEYS[6])
  return s or 'missing'
end
local ttl = tonumber(ARGV[3])
local inline = 0
if ARGV[4] == 'staged' then
  if redis.call('LLEN', KEYS[4]) ~= tonumber(ARGV[5]) then
    redis.call('DEL', KEYS[4])
    return 'incomplete'
  end
  redis.call('RENAME', KEYS[4], KEYS[2])
  redis.call('EXPIRE', KEYS[2], ttl)
elseif tonumber(ARGV[5]) > 0 then
  inline = tonumber(ARGV[5])
  redis.call('RPUSH', KEYS[2], unpack(ARGV, 6, 5 + inline))
  redis.call('EXPIRE', KEYS[2], ttl)
end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'finished_at', ARGV[2])
for i = 6 + inline, #ARGV, 2 do
  if string.sub(ARGV[i], 1, 1) == '+' then  -- a count of the worker's, only for a finish that lands
    redis.call('HINCRBY', KEYS[7], string.sub(ARGV[i], 2), ARGV[i + 1])
  else
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
redis.call('EXPIRE', KEYS[1], ttl)
if redis.call('HGET', KEYS[1], 'notify') then
  redis.call('RPUSH', KEYS[5], ARGV[1])
  redis.call('EXPIRE', KEYS[5], ttl)
end
redis.call('PUBLISH', KEYS[3], ARGV[1])
redis.call('DEL', KEYS[6])
return 'ok'
"""
"""KEYS: job hash, result list, events channel, staging list, done list, lease key, a worker's
statistics hash. ARGV: status, finished_at, ttl, 'staged' or 'inline', N (inline: the N result
chunks that follow; staged: the chunks the staging list must hold), then field/value pairs
(error, stats; a field ``+name`` adds the value to ``name`` in the statistics hash instead, so a
finish that does not land counts nothing, and a count is never taken back). Returns 'ok', or the
terminal/'missing' state that made it a no-op, or 'incomplete' when the staging list lacks chunks
(a push of it failed, e.g. Redis out of memory): the partial list is dropped, the job untouched. A job
created with notify also gets its status pushed onto the done list its synchronous caller
blocks on. An ended job's delivery lease goes (a claim finds the job ended before it looks at the
lease): left to expire, 15,779 of them outlived their jobs by 11 minutes in a soak run."""

CANCEL = """
local s = redis.call('HGET', KEYS[1], 'status')
if not s then return 'missing' end
if s ~= 'queued' then return s end
local message = redis.call('HGET', KEYS[1], 'message')
if message and KEYS[4] then
  redis.pcall('LREM', KEYS[4], 1, message)  -- best effort: an unusable queue must not stop the cancel
end
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[1])
redis.call('HDEL', KEYS[1], 'message')
redis.call('EXPIRE', KEYS[1], ARGV[2])
if redis.call('HGET', KEYS[1], 'notify') then
  redis.call('RPUSH', KEYS[3], 'cancelled')
  redis.call('EXPIRE', KEYS[3], ARGV[2])
end
redis.call('PUBLISH', KEYS[2], 'cancelled')
return 'ok'
"""
"""KEYS: job hash, events channel, done list[, queue]. ARGV: finished_at, ttl. Cancels only a
queued job, and takes its message off the queue when a worker has not taken it yet (the queue's
depth is what ``BGE_M3_MAX_QUEUED`` and the autoscaling metric count); a message a worker took and
put back was rewritten by kombu and stays, to be skipped by the worker that takes it. Like a
finish, a cancel gives the record ``ttl`` from now: a job cancelled after hours in the queue must
not vanish seconds later, before its submitter reads that it was cancelled."""

OBSERVE = """
local s = redis.call('HGET', KEYS[1], 'status')
if s ~= 'succeeded' and s ~= 'failed' and s ~= 'cancelled' then return 0 end
return redis.call('HSETNX', KEYS[1], ARGV[1], '1')
"""
"""KEYS: job hash. ARGV: the flag field. 1 for the first caller to see the job finished, else 0."""

RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
if KEYS[2] and redis.call('HGET', KEYS[2], 'status') == 'running' then
  redis.call('HSET', KEYS[2], 'status', 'queued')
  redis.call('HDEL', KEYS[2], 'started_at', 'worker')
end
return 1
"""
"""KEYS: lease key[, job hash]. ARGV: holder. Deletes the lease only while ``holder`` still holds
it. Given the job hash (a delivery handing its job back), a job still ``running`` reads
``queued`` again: while the lease was the holder's no other delivery claimed the job, so its
message is back on the queue and nothing runs it. Returns 1 when the lease was deleted."""

SWEEP = """
local now, lost_after, confirm = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - lost_after, 'LIMIT', 0, tonumber(ARGV[4]))
if #old == 0 then
  redis.call('DEL', KEYS[2])
  return {}
end
local seen = {}
local function note(text)
  local id = string.match(text, '"correlation_id":%s*"([^"]+)"')
  if id then seen[id] = true end
end
for _, m in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do note(m) end
for _, m in ipairs(redis.call('HVALS', KEYS[4])) do note(m) end
local resent = {}
for _, id in ipairs(old) do
  local job = ARGV[5] .. id
  local status = redis.call('HGET', job, 'status')
  local message = redis.call('HGET', job, 'message')
  if status ~= 'queued' or not message then
    redis.call('ZREM', KEYS[1], id)  -- claimed, cancelled or expired
    redis.call('ZREM', KEYS[2], id)
  elseif seen[id] then
    redis.call('ZREM', KEYS[2], id)  -- waiting its turn, or held by a worker
  else
    local first = redis.call('ZSCORE', KEYS[2], id)
    if not first then
      redis.call('ZADD', KEYS[2], now, id)
    elseif now - tonumber(first) >= confirm then
      -- A tag of its own: kombu keys its unacked hash by it, and two live copies sharing one
      -- would share one entry (the first ack would drop the other's). The record keeps the
      -- copy sent, for a cancel to take off the queue.
      message = string.gsub(message, '"delivery_tag":%s*"[^"]*"', '"delivery_tag": "' .. ARGV[6] .. id .. '"', 1)
      redis.call('HSET', job, 'message', message)
      redis.call('RPUSH', KEYS[3], message)  -- the consuming end: it has waited long enough
      redis.call('ZADD', KEYS[1], now, id)
      redis.call('ZREM', KEYS[2], id)
      redis.call('HINCRBY', job, 'resent', 1)
      resent[#resent + 1] = id
    end
  end
end
for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if not redis.call('ZSCORE', KEYS[1], id) then redis.call('ZREM', KEYS[2], id) end  -- claimed since
end
return resent
"""
"""KEYS: waiting set, missing set, queue list, kombu's unacked hash. ARGV: now, lost after
(seconds), confirm after (seconds), how many to look at, the job key prefix, a fresh delivery
tag prefix (a message sent again gets it and its id as its tag). Looks at the jobs
waiting longest (at least ``lost after`` since sent): one whose message is neither on the queue
nor in the unacked hash (by its correlation id: kombu rewrites a message it puts back) is marked
missing; one still missing ``confirm after`` later gets its message pushed again. Two sightings
apart, because a worker holds a message between its pop and its unacked write for a moment. A
job no longer queued, or without its message (a delivery claimed it), leaves both sets, and a
job claimed since it was marked missing leaves that set. Returns the ids sent again."""
