-- decimal(n): a whole number as text, for a key name or a command's argument.
-- Lua turns a number into a string (in `..`, and for each number given to
-- redis.call) with a printf of a float, which costs Redis more than a lookup;
-- string.format's integer conversion is a fraction of that.
local function decimal(n)
  return string.format('%d', n)
end
