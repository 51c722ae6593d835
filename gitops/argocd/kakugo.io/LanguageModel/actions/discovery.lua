-- Argo CD actions of a LanguageModel: suspend, resume, retry (a Stalled stage).
local actions = {}
local suspended = obj.spec ~= nil and obj.spec.suspend == true
local stalled = false
if obj.status ~= nil and obj.status.conditions ~= nil then
  for _, c in ipairs(obj.status.conditions) do
    if c.type == "Stalled" and c.status == "True" then
      stalled = true
    end
  end
end
actions["suspend"] = { ["disabled"] = suspended, ["iconClass"] = "fa fa-fw fa-pause", ["displayName"] = "Suspend" }
actions["resume"] = { ["disabled"] = not suspended, ["iconClass"] = "fa fa-fw fa-play", ["displayName"] = "Resume" }
actions["retry"] = { ["disabled"] = not stalled, ["iconClass"] = "fa fa-fw fa-redo", ["displayName"] = "Retry failed stage" }
return actions
