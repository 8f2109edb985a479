-- Live entries (deadline in the future) of each zset in KEYS[5..], O(log n) each.
local out = {}
for i = 5, #KEYS do
  out[#out + 1] = redis.call('ZCOUNT', KEYS[i], AFTER_NOW, '+inf')
end
return out
