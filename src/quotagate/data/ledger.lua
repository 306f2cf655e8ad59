-- quotagate's shared reservation ledger: one mailbox per call, atomically (see policy/shared.py).
--
-- KEYS (all carry the mailbox as hash tag):
--   1 res  hash  transaction (and the copy, after a NUL) -> cjson {b=bytes, s="held"|"flight"|"aside", c=client, t=made, e=expires,
--                 d=delivered|0, g=the folder with limits of its own the copy is for, if any}; "aside": a copy refused
--                 (or capped) at DATA of a message that may still be accepted for its other recipients, counted
--                 nowhere until its transaction ends with data (then in flight) or without (then gone)
--   2 sum  hash  b, m (bytes and messages of every live reservation); hb, hm (of those held before DATA);
--                 cb:CLIENT, cm:CLIENT (held before DATA);
--                 fb:FOLDER, fm:FOLDER (live ones for that folder); cb:CLIENT\0FOLDER, cm:... (held for it)
--   3 exp  zset  transaction by expiry
--   4 und  zset  in flight and not matched to a delivery yet, by size (smallest first)
--   5 dlv  zset  delivery seen, by when
--   6 use  hash  b, m, at: the mailbox's usage as the storage host last measured it
--   7 ids  zset  deliveries applied, by name (a delivery sent twice is applied once), by when
-- ARGV[1] is the operation, ARGV[2] the keys' lifetime in ms (they go when a mailbox goes quiet).
-- Every time is Redis's own clock (TIME), in ms; the hosts pass ages, never their clocks.

redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local op, life = ARGV[1], tonumber(ARGV[2])
local RES, SUM, EXP, UND, DLV, USE, IDS = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local SWEEP = 256  -- expired or delivered reservations let go per call: each call stays short

local function get(tx)
  local raw = redis.call('HGET', RES, tx)
  if raw then return cjson.decode(raw) end
  return nil
end

local function sums_add(b, m, bytes, sign)  -- sums of bytes and messages that go at no message
  redis.call('HINCRBY', SUM, b, sign * bytes)
  if redis.call('HINCRBY', SUM, m, sign) <= 0 then
    redis.call('HDEL', SUM, b, m)
  end
end

local function client_add(r, sign)  -- held before DATA: its client's sums (in a folder with limits, r.g), and all
  sums_add('hb', 'hm', r.b, sign)
  sums_add('cb:' .. r.c, 'cm:' .. r.c, r.b, sign)
  if r.g then sums_add('cb:' .. r.c .. '\0' .. r.g, 'cm:' .. r.c .. '\0' .. r.g, r.b, sign) end
end

local function folder_add(r, sign)  -- every live reservation for a folder with limits, held or in flight
  if r.g then sums_add('fb:' .. r.g, 'fm:' .. r.g, r.b, sign) end
end

local function drop(tx, r)
  redis.call('HDEL', RES, tx)
  redis.call('ZREM', EXP, tx)
  if r.s == 'aside' then return end  -- counted nowhere
  redis.call('ZREM', UND, tx)
  redis.call('ZREM', DLV, tx)
  redis.call('HINCRBY', SUM, 'b', -r.b)
  redis.call('HINCRBY', SUM, 'm', -1)
  folder_add(r, -1)
  if r.s == 'held' then client_add(r, -1) end
end

local function add(tx, r)
  redis.call('HSET', RES, tx, cjson.encode(r))
  redis.call('ZADD', EXP, r.e, tx)
  if r.s == 'aside' then return end  -- counted nowhere
  redis.call('HINCRBY', SUM, 'b', r.b)
  redis.call('HINCRBY', SUM, 'm', 1)
  folder_add(r, 1)
  if r.s == 'held' then client_add(r, 1)
  elseif r.d == 0 then redis.call('ZADD', UND, r.b, tx)
  else redis.call('ZADD', DLV, r.d, tx) end
end

local function sweep(zset, upto)
  local gone = 0
  for _, tx in ipairs(redis.call('ZRANGEBYSCORE', zset, '-inf', upto, 'LIMIT', 0, SWEEP)) do
    local r = get(tx)
    if r then drop(tx, r); gone = gone + 1
    else redis.call('ZREM', zset, tx) end
  end
  return gone
end

local function lengthen(key)  -- never shortened: another host's reservation_seconds may be longer
  if redis.call('PTTL', key) < life then redis.call('PEXPIRE', key, life) end
end

local function keep()  -- the usage key keeps its own lifetime (set by the op 'usage')
  for i = 1, 5 do lengthen(KEYS[i]) end
end

local function sums()
  local s = redis.call('HMGET', SUM, 'b', 'm')
  local b, m = tonumber(s[1] or 0), tonumber(s[2] or 0)
  if m <= 0 and redis.call('HLEN', SUM) > 0 then
    -- Nothing is held: neither can any client or folder hold anything (sums a script of another
    -- version left behind, letting go of a record it did not count the same way, go here).
    redis.call('DEL', SUM)
    return 0, 0
  end
  return b, m
end

if op == 'check' or op == 'data' or op == 'prdr' then
  -- ARGV: 3 tx, 4 client, 5 size (0: unknown, hold nothing), 6 cap bytes, 7 cap messages,
  -- 8 reservation ms, 9 local usage bytes, 10 messages, 11 its age in ms, 12 whether that age
  -- is by the clock of the host that measured it (1: a live read, or this host's own watch; 0:
  -- a reading from the store, taken on another host: its age holds both clocks' difference),
  -- 13 the oldest usage believed (max_usage_age) in ms,
  -- 14 ceiling bytes, 15 ceiling messages ('': no limit), 16..19 a folder's usage and ceiling,
  -- 20, 21 the share of it one client may hold and 22 its name (optional, together): the folder
  -- is weighed with the room held for it alone, the mailbox with all of it
  -- 'data' (the check at DATA, with the message's real size) weighs it in place of what the
  -- transaction holds, never beside it; refused, that hold is let go. 'prdr' (the same, for one
  -- recipient of a PRDR message) lets it go too when refused for the client's share: no copy
  -- comes (without PRDR the message may still come, for the others' sake: the hold stays).
  local tx, client, size = ARGV[3], ARGV[4], tonumber(ARGV[5])
  local ub, um, at, source = tonumber(ARGV[9]), tonumber(ARGV[10]), now - tonumber(ARGV[11]), 'local'
  local use = redis.call('HMGET', USE, 'b', 'm', 'at')
  -- The storage host's own reading wins over a copy from the store, whatever their ages say: an
  -- MX whose clock is behind would send the copy as taken now, releasing mail still in flight.
  -- Not once it is older than any usage is believed (a storage host that stopped writing here).
  if use[3] and now - tonumber(use[3]) <= tonumber(ARGV[13]) and (ARGV[12] ~= '1' or tonumber(use[3]) >= at) then
    ub, um, at, source = tonumber(use[1]), tonumber(use[2]), tonumber(use[3]), 'shared'
  end
  local expired = sweep(EXP, now)
  -- A reading releases only what it includes: deliveries seen before it was taken.
  local delivered = sweep(DLV, '(' .. at)
  local rb, rm = sums()
  local old = get(tx)
  local mine = (old and old.s == 'held') and old or nil
  if mine then rb = rb - mine.b; rm = rm - 1 end  -- asked again for this copy: weighed in its place
  local function within(b, m, cb, cm)  -- a ceiling of '' is no limit
    return (cb == '' or b <= tonumber(cb)) and (cm == '' or m <= tonumber(cm))
  end
  local folder = ARGV[22]
  local fb, fm = 0, 0
  if folder then
    local f = redis.call('HMGET', SUM, 'fb:' .. folder, 'fm:' .. folder)
    fb, fm = tonumber(f[1] or 0), tonumber(f[2] or 0)
    if mine and mine.g == folder then fb = fb - mine.b; fm = fm - 1 end
    fb, fm = math.min(fb, rb), math.min(fm, rm)  -- a part of what the mailbox holds, never more
  end
  local fits = within(ub + rb, um + rm, ARGV[14], ARGV[15])
  if fits and ARGV[16] then
    fits = within(tonumber(ARGV[16]) + fb, tonumber(ARGV[17]) + fm, ARGV[18], ARGV[19])
  end
  local held, capped = 0, 0
  -- Refused (or capped) at DATA without PRDR, the message may still be accepted for its other
  -- recipients and reach this one: set aside, in flight if it is, when it fits beside what lands
  -- before it (the usage and mail in flight, not what others hold before DATA: their mail may
  -- never come). The transaction's other copies are not weighed here: more held, never less.
  local function aside()
    if op ~= 'data' or size <= 0 then return end
    local h = redis.call('HMGET', SUM, 'hb', 'hm')
    local total = redis.call('HMGET', SUM, 'b', 'm')
    local lb = tonumber(total[1] or 0) - tonumber(h[1] or 0)
    local lm = tonumber(total[2] or 0) - tonumber(h[2] or 0)
    if within(ub + lb, um + lm, ARGV[14], ARGV[15]) then
      local made = get(tx)
      if made then drop(tx, made) end
      add(tx, {b = size, s = 'aside', c = client, t = now, e = now + tonumber(ARGV[8]), d = 0, g = folder})
      keep()
    end
  end
  if not fits and op ~= 'check' then
    if mine then drop(tx, mine) end
    aside()
  elseif fits and size > 0 then
    local function over(who, cap_b, cap_m)
      local cb = tonumber(redis.call('HGET', SUM, 'cb:' .. who) or 0) + size
      local cm = tonumber(redis.call('HGET', SUM, 'cm:' .. who) or 0) + 1
      if mine then cb = cb - mine.b; cm = cm - 1 end
      return cb > math.max(tonumber(cap_b), size) or cm > math.max(tonumber(cap_m), 1)
    end
    if over(client, ARGV[6], ARGV[7]) or (folder and over(client .. '\0' .. folder, ARGV[20], ARGV[21])) then
      capped = 1
      if op ~= 'check' and mine then drop(tx, mine) end  -- with PRDR refused: no copy, nor its room
      aside()
    else
      if old then drop(tx, old) end
      add(tx, {b = size, s = 'held', c = client, t = now, e = now + tonumber(ARGV[8]), d = 0, g = folder})
      held = 1
      keep()
    end
  end
  return {fits and 1 or 0, held, capped, ub, um, now - at, rb, rm, source, expired, delivered, fb, fm}

elseif op == 'end' then
  -- ARGV: 3 tx, 4 with data (1: the message was accepted, its room goes in flight), 5 the
  -- message's real size ('': not known), held in flight in place of the size declared
  local tx = ARGV[3]
  local r = get(tx)
  if r and r.s == 'aside' then  -- counted from now on, in flight, if its message was accepted
    drop(tx, r)
    if ARGV[4] == '1' then
      r.s = 'flight'
      add(tx, r)
      keep()
    end
    return 1
  end
  if not r or r.s ~= 'held' then return 0 end
  if ARGV[4] == '1' then
    client_add(r, -1)
    local size = tonumber(ARGV[5] or '')
    if size then
      redis.call('HINCRBY', SUM, 'b', size - r.b)
      if r.g then redis.call('HINCRBY', SUM, 'fb:' .. r.g, size - r.b) end
      r.b = size
    end
    r.s = 'flight'
    redis.call('HSET', RES, tx, cjson.encode(r))
    redis.call('ZADD', UND, r.b, tx)
    keep()
  else
    drop(tx, r)
  end
  return 1

elseif op == 'delivered' then
  -- A message landed: a reservation in flight not matched yet is marked delivered. Its size
  -- known (ARGV[4]), the one nearest it, none larger than the most that message could have
  -- held (ARGV[5]; see reservations.delivery_most): mail the daemons never let in lands too;
  -- unknown (absent), the smallest: never larger than a message the daemons let in.
  -- ARGV: 3 the delivery's name: one already applied is not applied again (a replay).
  if redis.call('ZSCORE', IDS, ARGV[3]) then return 0 end
  redis.call('ZREMRANGEBYSCORE', IDS, '-inf', now - life)
  redis.call('ZADD', IDS, now, ARGV[3])
  lengthen(IDS)
  local size, most = tonumber(ARGV[4] or ''), ARGV[5]
  while true do
    local tx
    if not size then
      local popped = redis.call('ZPOPMIN', UND)
      tx = popped[1]
    else
      local below = redis.call('ZREVRANGEBYSCORE', UND, '(' .. size, '-inf', 'WITHSCORES', 'LIMIT', 0, 1)
      local above = redis.call('ZRANGEBYSCORE', UND, size, most, 'WITHSCORES', 'LIMIT', 0, 1)
      if above[1] and (not below[1] or tonumber(above[2]) - size < size - tonumber(below[2])) then
        tx = above[1]
      else
        tx = below[1]
      end
      if tx then redis.call('ZREM', UND, tx) end
    end
    if not tx then return 0 end
    local r = get(tx)
    if r and r.d == 0 then
      r.d = now
      redis.call('HSET', RES, tx, cjson.encode(r))
      redis.call('ZADD', DLV, now, tx)
      keep()
      return 1
    end
  end

elseif op == 'usage' then
  -- ARGV: 3 bytes, 4 messages, 5 age of the reading in ms. A reading older than the one kept
  -- (sent again after an outage, or overtaken on its way) changes nothing.
  local at = now - tonumber(ARGV[5])
  local kept = tonumber(redis.call('HGET', USE, 'at') or '-1')
  if kept > at then return 0 end
  redis.call('HSET', USE, 'b', ARGV[3], 'm', ARGV[4], 'at', at)
  lengthen(USE)
  return 1

elseif op == 'restore' then
  -- A reservation a daemon took while Redis was away, written back. ARGV: 3 tx, 4 client,
  -- 5 bytes, 6 state, 7 ms left, 8 ms since its delivery was seen (-1: not seen), 9 the folder
  -- with limits of its own it is for ('': none); with KEYS 8 (the transaction's index) and 9 (word
  -- of its ends, see RedisLedger._apply in policy/shared.py): 10 when it was made and 11 its entry
  -- in the index. 10 and the times in KEYS[9] are by the clock of the host that wrote both (the
  -- node in the transaction's key), never compared with Redis's.
  local tx = ARGV[3]
  if get(tx) then return 0 end
  local state, bytes = ARGV[6], tonumber(ARGV[5])
  local INDEX, ENDED = KEYS[8], KEYS[9]
  if state == 'held' and INDEX then
    -- Its transaction ended after it was made (on another daemon of the host while Redis was
    -- away, or once this very room had been written back and let go, and a state file written
    -- before brings it back): the message was accepted (its room is in flight) or never came.
    local made = tonumber(ARGV[10])
    local ended = redis.call('HMGET', ENDED, 'd', 's', 'n')
    if ended[1] and tonumber(ended[1]) >= made then
      state = 'flight'
      if ended[2] and ended[2] ~= '' then bytes = tonumber(ended[2]) end
    elseif ended[3] and tonumber(ended[3]) >= made then
      return 0
    end
  end
  local since = tonumber(ARGV[8])
  local folder = ARGV[9]
  if folder == '' then folder = nil end
  add(tx, {b = bytes, s = state, c = ARGV[4], t = now, e = now + tonumber(ARGV[7]),
           d = (state == 'flight' and since >= 0) and (now - since) or 0, g = folder})
  if state == 'held' and INDEX then  -- with it, atomically: an end that reads the index finds it
    redis.call('SADD', INDEX, ARGV[11])
    lengthen(INDEX)
  end
  keep()
  return 1

elseif op == 'release' then
  local n = redis.call('HLEN', RES)
  redis.call('DEL', RES, SUM, EXP, UND, DLV)
  return n

elseif op == 'sums' then
  local rb, rm = sums()
  return {rb, rm}
end
return redis.error_reply('unknown op ' .. tostring(op))
