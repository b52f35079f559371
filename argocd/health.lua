-- Argo CD health of the realtime.dev resources (RealtimeCluster, TurnPool, KafkaTopic,
-- MongoIndex), from the kstatus conditions the operator writes: Ready, Reconciling,
-- Stalled (and a TurnPool's Degraded). One script for the four kinds; each kind's
-- directory under resource_customizations/realtime.dev/ links to it (Argo CD's layout).
--   Suspended    the pause annotation is set (Reconciling=False, reason Paused)
--   Progressing  no status yet, a generation not observed yet, or Reconciling=True
--   Degraded     Stalled=True (the message says what to change), a TurnPool with
--                unhealthy servers, or not Ready for any other reason
--   Healthy      Ready=True
local hs = {}

local function find(conditions, kind)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function say(status, condition)
  hs.status = status
  hs.message = (condition.reason or "") .. ": " .. (condition.message or "")
  return hs
end

if obj.status == nil or obj.status.conditions == nil or #obj.status.conditions == 0 then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report a status"
  return hs
end
local conditions = obj.status.conditions
local ready = find(conditions, "Ready")
local reconciling = find(conditions, "Reconciling")
local stalled = find(conditions, "Stalled")
local degraded = find(conditions, "Degraded")

if reconciling ~= nil and reconciling.status == "False" and reconciling.reason == "Paused" then
  return say("Suspended", reconciling)
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and observed ~= nil and observed < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. generation
  return hs
end
if stalled ~= nil and stalled.status == "True" then
  return say("Degraded", stalled)
end
if ready ~= nil and ready.status == "True" then
  if degraded ~= nil and degraded.status == "True" then
    return say("Degraded", degraded)
  end
  return say("Healthy", ready)
end
if reconciling ~= nil and reconciling.status == "True" then
  return say("Progressing", reconciling)
end
if ready ~= nil then
  return say("Degraded", ready)
end
hs.status = "Progressing"
hs.message = "Waiting for the operator to report readiness"
return hs
