-- The users with a live connection in the group whose users zset is KEYS[5].
-- Returns a list of user keys, no records: O(log n + m).
return redis.call('ZRANGEBYSCORE', KEYS[5], AFTER_NOW, '+inf')
