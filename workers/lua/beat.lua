-- beat: worker W says it is alive (on Redis's clock) and publishes what
-- `status` shows of it. Returns 0 when W beat before but is no longer
-- registered: a sweeper found it silent, declared it dead and requeued what
-- it held, so W must stop at once rather than finish work now done elsewhere.
--! KEYS workers worker_info
--! ARGV worker first info_ttl
--! ARGV* info
--! include lib/now.lua
local t = now()
if first ~= '1' and not redis.call('ZSCORE', workers, worker) then return 0 end
redis.call('ZADD', workers, t, worker)
if #info > 0 then redis.call('HSET', worker_info, unpack(info)) end
redis.call('HSET', worker_info, 'beat', tostring(t))
redis.call('EXPIRE', worker_info, tonumber(info_ttl))
return 1
