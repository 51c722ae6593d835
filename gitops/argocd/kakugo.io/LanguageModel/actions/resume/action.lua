-- Resume: the operator resumes the suspended Job and goes on.
if obj.spec == nil then
  obj.spec = {}
end
obj.spec.suspend = false
return obj
