-- Suspend: the operator suspends the running Job and starts nothing new.
if obj.spec == nil then
  obj.spec = {}
end
obj.spec.suspend = true
return obj
