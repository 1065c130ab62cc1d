-- Asks the sidecar about every request (HAProxy has no auth_request of its own) with HAProxy's
-- Lua HTTP client (2.5+). Loaded by deploy/haproxy/haproxy.cfg:
--     lua-load /etc/haproxy/sidecar.lua
--     http-request lua.sidecar_check "http://127.0.0.1:8080/check"
-- On allow (2xx) the sidecar's x-credential-* headers are added to the request (haproxy.cfg has
-- removed every client-sent one before); on deny the client gets the sidecar's answer (status,
-- challenge, body); when the sidecar cannot be asked, 500 and the upstream is never reached.

-- What the client may see of a denial.
local DENIAL_HEADERS = { "www-authenticate", "retry-after", "content-type", "cache-control" }
local PREFIX = "x-credential-"

local function deny(txn, status, headers, body)
  local reply = txn:reply({ status = status, body = body or "" })
  for _, name in ipairs(DENIAL_HEADERS) do
    for _, value in pairs((headers or {})[name] or {}) do
      reply:add_header(name, value)
    end
  end
  txn:done(reply)
end

core.register_action("sidecar_check", { "http-req" }, function(txn, url)
  -- The original request as the upstream receives it (the sidecar holds the host to
  -- routing.origins; the Lua client's own Host is the sidecar's address). The whole Host value
  -- (req.fhdr): req.hdr would read only the last element of "admin.example, api.example", and
  -- the upstream receives all of it.
  local send = {
    ["x-forwarded-method"] = { txn.sf:method() },
    ["x-forwarded-uri"] = { txn.sf:pathq() },
    ["x-forwarded-host"] = { txn.sf:req_fhdr("host") },
    ["x-forwarded-proto"] = { txn.f:ssl_fc() and "https" or "http" },
    -- The client's address, set (never a client's own X-Forwarded-For): the sidecar charges new
    -- tokens to it (admission.source_header), so that one client cannot spend the others' IdP calls.
    ["x-forwarded-for"] = { txn.sf:src() },
  }
  -- Every copy: the sidecar refuses a request with two Authorization headers.
  local authorization = txn.http:req_get_headers()["authorization"]
  if authorization ~= nil then
    send["authorization"] = {}
    for _, value in pairs(authorization) do
      table.insert(send["authorization"], value)
    end
  end
  -- The certificate of THIS TLS connection (haproxy.cfg: ssl_c_der,base64); unset without one.
  local certificate = txn:get_var("txn.sidecar_cert")
  if certificate ~= nil and certificate ~= "" then
    send["x-client-cert"] = { certificate }
  end

  local response = core.httpclient():get({ url = url, headers = send, timeout = 5000 })
  local status = response and response.status or 0
  if status < 200 or status >= 600 then
    core.Warning("sidecar_check: no answer from the sidecar (" .. tostring(response and response.reason) .. ")")
    return deny(txn, 500)
  end
  if status >= 300 then
    return deny(txn, status, response.headers, response.body)
  end
  for name, values in pairs(response.headers or {}) do
    local lower = string.lower(name)
    if string.sub(lower, 1, #PREFIX) == PREFIX then
      for _, value in pairs(values) do
        -- An empty value is a claim the token does not have: no header, as nginx does.
        if value ~= "" then
          txn.http:req_add_header(lower, value)
        end
      end
    end
  end
end, 1)
