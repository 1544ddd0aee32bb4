"""The relay's publish script: a batch of XADDs and a trim that never drops unconsumed entries.

One EVALSHA per batch instead of one XADD command per event (redis-py's per-command work was most
of the relay's CPU), and the batch's entries as one MessagePack argument rather than one argument
per field and value (redis-py encoding each of them was the next largest part). After adding, the
stream is cut back towards `maxlen`, but never past the oldest entry the consumer group still
needs: its oldest pending entry, or the first entry it has not yet read. With the group stopped
the stream grows beyond `maxlen` rather than losing events; once the group catches up, the next
batch trims it back. (XADD's own MAXLEN ignores consumer groups: it would drop entries nobody had
read.) Without the group there is nothing to wait for and the stream is cut to `maxlen`.

KEYS[1]: the stream. ARGV[1]: maxlen; ARGV[2]: the consumer group; ARGV[3]: the entries, a
MessagePack array with one array of fields and values per entry. Returns {entries added, entries
trimmed}.
"""

PUBLISH_AND_TRIM = """
local stream = KEYS[1]
local maxlen = tonumber(ARGV[1])
local group = ARGV[2]
local added = 0
for _, fields in ipairs(cmsgpack.unpack(ARGV[3])) do
  redis.call('XADD', stream, '*', unpack(fields))
  added = added + 1
end
local length = redis.call('XLEN', stream)
if length <= maxlen then
  return {added, 0}
end

local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function older(a, b)
  local ams, aseq = parse(a)
  local bms, bseq = parse(b)
  return ams < bms or (ams == bms and aseq < bseq)
end
local function next_id(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return ms .. '-' .. (tonumber(seq) + 1)
end

local needed = nil
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', stream)
if ok then
  for _, info in ipairs(groups) do
    local name, delivered = nil, nil
    for j = 1, #info, 2 do
      if info[j] == 'name' then
        name = info[j + 1]
      elseif info[j] == 'last-delivered-id' then
        delivered = info[j + 1]
      end
    end
    if name == group then
      needed = next_id(delivered)
      local pending = redis.call('XPENDING', stream, group)
      if tonumber(pending[1]) > 0 and older(pending[2], needed) then
        needed = pending[2]
      end
    end
  end
end
if needed == nil then
  return {added, redis.call('XTRIM', stream, 'MAXLEN', maxlen)}
end
local doomed = redis.call('XRANGE', stream, '-', '(' .. needed, 'COUNT', length - maxlen)
if #doomed == 0 then
  return {added, 0}
end
return {added, redis.call('XTRIM', stream, 'MINID', next_id(doomed[#doomed][1]))}
"""
