-- Retry: ask the operator for a fresh retry budget for every stalled member. The value is a
-- new timestamp each time, so every click is a new request.
if obj.metadata == nil then
  obj.metadata = {}
end
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["kakugo.io/retry"] = os.date("!%Y-%m-%dT%H:%M:%SZ")
return obj
