-- wrk script: durable reserves of one unit of SKU `wrk_sku` (set WRK_SKU to change it), one distinct
-- user per request. Counts 201s, 409s and anything else.
local sku = os.getenv("WRK_SKU") or "hot"
local counter = 0
local threads = {}
created, refused, other = 0, 0, 0

function setup(thread)
  table.insert(threads, thread)
end

request = function()
  counter = counter + 1
  local body = '{"items":[{"sku":"' .. sku .. '","qty":1}],"ttl_ms":60000,"user_id":"u' .. counter .. '"}'
  return wrk.format("POST", "/v1/reservations", {["Content-Type"] = "application/json"}, body)
end

response = function(status, headers, body)
  if status == 201 then created = created + 1
  elseif status == 409 then refused = refused + 1
  else other = other + 1 end
end

function done(summary, latency, requests)
  local c, r, o = 0, 0, 0
  for _, thread in ipairs(threads) do
    c = c + thread:get("created"); r = r + thread:get("refused"); o = o + thread:get("other")
  end
  io.write(string.format("201: %d, 409: %d, other: %d\n", c, r, o))
  io.write(string.format("p50 %.0f us, p99 %.0f us, p99.9 %.0f us\n",
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
