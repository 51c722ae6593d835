-- Argo CD actions of a LanguageFleet: suspend and resume every member, retry the
-- stalled members.
local actions = {}
local suspended = obj.spec ~= nil and obj.spec.suspend == true
local stalled = false
if obj.status ~= nil then
  if type(obj.status.stalled) == "number" and obj.status.stalled > 0 then
    stalled = true
  end
  if obj.status.conditions ~= nil then
    for _, c in ipairs(obj.status.conditions) do
      if c.type == "Stalled" and c.status == "True" then
        stalled = true
      end
    end
  end
end
actions["suspend"] = { ["disabled"] = suspended, ["iconClass"] = "fa fa-fw fa-pause", ["displayName"] = "Suspend all" }
actions["resume"] = { ["disabled"] = not suspended, ["iconClass"] = "fa fa-fw fa-play", ["displayName"] = "Resume all" }
actions["retry"] = { ["disabled"] = not stalled, ["iconClass"] = "fa fa-fw fa-redo", ["displayName"] = "Retry stalled languages" }
return actions
