-- wrk script for scripts/bench: spreads requests over the provisioned fleet, each with
-- that device's own key. Arguments (after --): FLEET_FILE MODE [REPORT_FILE], MODE one of
-- 304 (GET with If-None-Match = the device's ETag), 200 (GET, no ETag), report (PATCH
-- /device/state with the report template, @UUID@ replaced), or static-304 / static-200
-- PATH ETAG: the same per-request work (a random device, its key in a header) sent to
-- another server's static PATH, so that nginx is measured with the very same load
-- generator. Counts answers whose status is not the one MODE expects and prints them at
-- the end, by status.

local devices, n = {}, 0
local mode, prefix, suffix
local expected = { ["304"] = 304, ["200"] = 200, report = 200, ["static-304"] = 304, ["static-200"] = 200 }
local static_path, static_etag
local threads = {}

function setup(thread)
    table.insert(threads, thread)
    thread:set("id", #threads)
end

function init(args)
    mode = args[2]
    for line in io.lines(args[1]) do
        local uuid, key, etag = line:match("^(%S+) (%S+) (%S+)$")
        n = n + 1
        devices[n] = { "/api/v1/device/" .. uuid .. "/state", key, '"' .. etag .. '"', uuid }
    end
    if mode == "static-304" or mode == "static-200" then
        static_path, static_etag = args[3], args[4]
    end
    if mode == "report" then
        local f = assert(io.open(args[3]))
        prefix, suffix = f:read("*a"):match("^(.-)@UUID@(.*)$")
        f:close()
    end
    math.randomseed(id * 7919)
    unexpected = {}
end

function request()
    local d = devices[math.random(n)]
    if mode == "static-304" then
        return wrk.format("GET", static_path, { ["X-Device-API-Key"] = d[2], ["If-None-Match"] = static_etag })
    elseif mode == "static-200" then
        return wrk.format("GET", static_path, { ["X-Device-API-Key"] = d[2] })
    elseif mode == "304" then
        return wrk.format("GET", d[1], { ["X-Device-API-Key"] = d[2], ["If-None-Match"] = d[3] })
    elseif mode == "200" then
        return wrk.format("GET", d[1], { ["X-Device-API-Key"] = d[2] })
    end
    return wrk.format("PATCH", "/api/v1/device/state",
        { ["X-Device-API-Key"] = d[2], ["Content-Type"] = "application/json" }, prefix .. d[4] .. suffix)
end

function response(status, headers, body)
    if status ~= expected[mode] then
        unexpected[status] = (unexpected[status] or 0) + 1
    end
end

function done(summary, latency, requests)
    local total, by_status = 0, {}
    for _, thread in ipairs(threads) do
        for status, count in pairs(thread:get("unexpected") or {}) do
            total = total + count
            by_status[status] = (by_status[status] or 0) + count
        end
    end
    if total > 0 then
        local parts = {}
        for status, count in pairs(by_status) do
            table.insert(parts, status .. " ×" .. count)
        end
        table.sort(parts)
        io.write("unexpected status: " .. total .. " answers (" .. table.concat(parts, ", ") .. ")\n")
    end
end
