-- wrk script: HTTP announces for random peers among PEERS (default
-- 100,000) across the torrents listed in $BENCH_HASHES (one 40-hex info hash
-- per line; 10,000 in run.sh). Peer i is on torrent i % T and announces
-- port 1024 + i / T, like udp_load, so both trackers see the same swarms.
local hashes = {}
local peers = tonumber(os.getenv("BENCH_PEERS") or "100000")

function init(args)
  local f = assert(io.open(os.getenv("BENCH_HASHES") or "hashes.txt"))
  for line in f:lines() do
    local enc = line:gsub("..", function(h) return "%" .. h end)
    hashes[#hashes + 1] = enc
  end
  f:close()
  math.randomseed(os.time() + math.floor((os.clock() * 1e6) % 1e6))
end

function request()
  local t = #hashes
  local i = math.random(0, peers - 1)
  local left = (i % 3 == 0) and 0 or 1000
  local path = "/announce?info_hash=" .. hashes[(i % t) + 1]
    .. "&peer_id=-WK0001-" .. string.format("%012d", i)
    .. "&port=" .. (1024 + math.floor(i / t))
    .. "&uploaded=0&downloaded=0&left=" .. left
    .. "&compact=1&numwant=50&key=" .. string.format("%08x", i)
  return wrk.format("GET", path)
end
