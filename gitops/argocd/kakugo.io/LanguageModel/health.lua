-- Argo CD health check of a Kakugo LanguageModel (kakugo.io/v1alpha1).
-- Reads the operator's kstatus-style conditions (Ready, Reconciling, Stalled, Suspended),
-- status.observedGeneration, status.phase, status.progress and status.cost.
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

local function text(c, fallback)
  if c == nil then
    return fallback
  end
  local reason = c.reason or fallback
  if c.message ~= nil and c.message ~= "" then
    return reason .. ": " .. c.message
  end
  return reason
end

local function cost(status)
  if status.cost ~= nil and status.cost.dollars ~= nil then
    return "$" .. status.cost.dollars
  end
  return nil
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

local stalled = condition(status, "Stalled")
if is_true(stalled) then
  hs.status = "Degraded"
  hs.message = text(stalled, "Stalled")
  return hs
end

local suspended = condition(status, "Suspended")
if (obj.spec ~= nil and obj.spec.suspend == true) or is_true(suspended) or status.phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = "Suspended (spec.suspend is true)"
  return hs
end

local ready = condition(status, "Ready")
if is_true(ready) then
  hs.status = "Healthy"
  local parts = { "Ready" }
  if status.evaluation ~= nil and status.evaluation.summary ~= nil and status.evaluation.summary ~= "" then
    table.insert(parts, status.evaluation.summary)
  end
  local c = cost(status)
  if c ~= nil then
    table.insert(parts, c)
  end
  hs.message = table.concat(parts, "; ")
  return hs
end

hs.status = "Progressing"
local parts = {}
local progress = status.progress
if progress ~= nil and progress.stages ~= nil and #progress.stages > 0 then
  -- Several stages run at once (the stage DAG): name them all.
  local p = "stage " .. progress.stages[1]
  if #progress.stages > 1 then
    p = "stages " .. table.concat(progress.stages, ", ")
  end
  if progress.stagesDone ~= nil and progress.stagesTotal ~= nil then
    p = p .. " (" .. tostring(progress.stagesDone) .. "/" .. tostring(progress.stagesTotal) .. " done)"
  end
  table.insert(parts, p)
end
local reconciling = condition(status, "Reconciling")
if reconciling ~= nil and reconciling.reason ~= nil then
  table.insert(parts, text(reconciling, "Reconciling"))
elseif status.phase ~= nil then
  table.insert(parts, status.phase)
end
local c = cost(status)
if c ~= nil then
  table.insert(parts, c)
end
if #parts == 0 then
  hs.message = "Reconciling"
else
  hs.message = table.concat(parts, "; ")
end
return hs
