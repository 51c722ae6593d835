-- Suspend every member of the fleet (the operator sets their spec.suspend).
if obj.spec == nil then
  obj.spec = {}
end
obj.spec.suspend = true
return obj
