# Shared by bench/load.sh and bench/load-ab.sh (sourced): the wrk scripts
# that send the signed request. Needs $work (body.json in it), $sig, $id
# and $t; writes $work/same.lua (with the headers reready_verify adds, A's
# client: "header-fair") and $work/plain.lua (the signature only).
lua() { # $1 = with the headers B adds (1) or not (0)
	cat <<LUA
wrk.method = "POST"
local f = io.open("$work/body.json", "rb"); wrk.body = f:read("*a"); f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-ReReady-Signature-512"] = "$sig"
if $1 == 1 then
	wrk.headers["X-ReReady-State"] = "complete"
	wrk.headers["X-ReReady-Device-Return-Id"] = "$id"
	wrk.headers["X-ReReady-Test"] = "false"
	wrk.headers["X-ReReady-Url"] = "https://www.reready.co/device_returns/$id"
	wrk.headers["X-ReReady-Timestamp"] = "$t"
	wrk.headers["X-ReReady-Verified"] = "hmac"
	wrk.headers["X-ReReady-Delivery-Id"] = "$t-0123456789abcdef0123456789abcdef"
end
local bad = 0
response = function(status) if status ~= 200 then bad = bad + 1 end end
done = function() if bad > 0 then io.stderr:write("non-200 answers: " .. bad .. "\n") end end
LUA
}
lua 1 >"$work/same.lua"
lua 0 >"$work/plain.lua"
