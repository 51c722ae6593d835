-- Argo CD health check of a Kakugo LanguageFleet (kakugo.io/v1alpha1).
-- A fleet is Degraded when it is Stalled (a member stalled, or invalid languages) or when
-- any member LanguageModel is stalled (status.stalled > 0: "partially stalled"), Healthy
-- when every member is Ready, Suspended when its members are.
local hs = {}

local function condition(status, kind)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function is_true(c)
  return c ~= nil and c.status == "True"
end

local function count(v)
  if type(v) == "number" then
    return v
  end
  return 0
end

local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Kakugo operator"
  return hs
end

local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

-- status.members: valid entries (invalid ones are reported, not created); older
-- statuses only have status.languages.
local total = count(status.languages)
if type(status.members) == "number" then
  total = status.members
end
local ready = count(status.ready)
local running = count(status.running)
local stalled = count(status.stalled)
local summary = tostring(ready) .. "/" .. tostring(total) .. " ready, " .. tostring(running) ..
  " running, " .. tostring(stalled) .. " stalled"
if status.cost ~= nil and status.cost.dollars ~= nil then
  summary = summary .. "; $" .. status.cost.dollars
end

local stalledCond = condition(status, "Stalled")
if is_true(stalledCond) then
  hs.status = "Degraded"
  local why = stalledCond.reason or "Stalled"
  if stalledCond.message ~= nil and stalledCond.message ~= "" then
    why = why .. ": " .. stalledCond.message
  end
  hs.message = why .. " (" .. summary .. ")"
  return hs
end
if stalled > 0 then
  hs.status = "Degraded"
  hs.message = tostring(stalled) .. " of " .. tostring(total) .. " languages stalled (" .. summary .. ")"
  return hs
end

if (obj.spec ~= nil and obj.spec.suspend == true) or is_true(condition(status, "Suspended"))
    or status.phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = "Suspended (spec.suspend is true; " .. summary .. ")"
  return hs
end

local readyCond = condition(status, "Ready")
if is_true(readyCond) or (total > 0 and ready == total) then
  hs.status = "Healthy"
  hs.message = summary
  return hs
end

hs.status = "Progressing"
hs.message = summary
return hs
