-- Resume every member of the fleet.
if obj.spec == nil then
  obj.spec = {}
end
obj.spec.suspend = false
return obj
