-- Argo CD health check for synthrec.io/v1alpha1 SyntheticDataset and RecognitionExperiment.
-- Install it under both keys of argocd-cm (see argocd-cm.yaml next to this file):
--   resource.customizations.health.synthrec.io_SyntheticDataset
--   resource.customizations.health.synthrec.io_RecognitionExperiment
--
-- The status conditions are the source of truth, read in the order synthrec derives status.phase from
-- them (synthrec/api/conditions.py derive_phase); status.phase is only the fallback for a status without
-- conditions.
--   Failed=True                  -> Degraded     (terminal)
--   Complete=True                -> Healthy      (terminal; phase Succeeded)
--   Suspended=True               -> Suspended    (spec.runPolicy.suspend)
--   anything else                -> Progressing  (Pending, Queued, Running, waiting for a dataset)
--   Degraded=True while running  -> Progressing, with the Degraded reason and message. The operator turns
--     trouble that cannot heal into Failed itself (retry limits, maxFailedShards, deadlines), so Argo CD's
--     Degraded is reserved for real failures; shards retrying or pods waiting for GPUs stay Progressing.
--   no status yet                -> Progressing (the operator has not picked the resource up)
-- Written for Lua 5.1 (Argo CD runs gopher-lua).
local hs = {}

local function find(conditions, ctype)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function isTrue(conditions, ctype)
  local c = find(conditions, ctype)
  return c ~= nil and c.status == "True"
end

local function describe(c, fallback)
  if c == nil then
    return fallback
  end
  local text = c.reason or c.type
  if c.message ~= nil and c.message ~= "" then
    text = text .. ": " .. c.message
  end
  return text
end

local function progress(status)
  local p = status.progress
  if p == nil then
    return nil
  end
  local parts = {}
  if p.stage ~= nil and p.stage ~= "" then
    table.insert(parts, p.stage)
  end
  if p.summary ~= nil and p.summary ~= "" then
    table.insert(parts, p.summary)
  end
  if p.percent ~= nil and #parts > 0 then
    table.insert(parts, "(" .. tostring(p.percent) .. "%)")
  end
  if #parts == 0 then
    return nil
  end
  return table.concat(parts, " ")
end

local function joined(prefix, detail)
  if detail == nil or detail == "" then
    return prefix
  end
  return prefix .. ": " .. detail
end

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the synthrec operator to pick up the resource"
  return hs
end

local status = obj.status
local conditions = status.conditions
if conditions ~= nil and #conditions == 0 then
  conditions = nil
end

-- Without conditions, only the printed phase is left to go by.
if conditions == nil then
  local phase = status.phase or "Pending"
  if phase == "Succeeded" then
    hs.status = "Healthy"
  elseif phase == "Failed" then
    hs.status = "Degraded"
  elseif phase == "Suspended" then
    hs.status = "Suspended"
  else
    hs.status = "Progressing"
  end
  hs.message = joined(phase, status.message or progress(status))
  return hs
end

-- Terminal and suspended states first, in derive_phase's order.
local settled = { { "Failed", "Degraded" }, { "Complete", "Healthy" }, { "Suspended", "Suspended" } }
for _, pair in ipairs(settled) do
  if isTrue(conditions, pair[1]) then
    hs.status = pair[2]
    hs.message = describe(find(conditions, pair[1]), pair[1])
    return hs
  end
end

-- A spec change (e.g. runPolicy.suspend) the operator has not seen yet: the conditions are stale.
local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

hs.status = "Progressing"
if isTrue(conditions, "Degraded") then
  hs.message = joined("Degraded", describe(find(conditions, "Degraded"), nil))
elseif isTrue(conditions, "Running") then
  hs.message = joined("Running", progress(status) or describe(find(conditions, "Running"), nil))
elseif isTrue(conditions, "Queued") then
  hs.message = joined("Queued", describe(find(conditions, "Queued"), nil))
elseif find(conditions, "DatasetReady") ~= nil and not isTrue(conditions, "DatasetReady") then
  hs.message = joined("Waiting for datasets", describe(find(conditions, "DatasetReady"), nil))
else
  hs.message = joined("Pending", status.message)
end
return hs
