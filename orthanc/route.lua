-- route.lua: Orthanc forwards every stable study to dicom-node, and never what the node sent.
--
-- The node stores its results (SEG, SR, SC, KOS, PDF) into the patient's own study in Orthanc.
-- Forwarding them to the node again would re-open the study there and run the models on their
-- own output, over and over. So every instance carries a mark, kept in Orthanc's metadata
-- "DicomNodeRouting" (in Orthanc's index: it survives restarts):
--
--   pending    received from anyone but the node; not yet forwarded
--   forwarded  handed to a store job towards the node (set back to pending if that job fails)
--   from-node  sent by the node (calling AE title of the node's modality entry, or
--              Manufacturer "dicom-node"): never forwarded
--
-- When a study becomes stable (no new instance for StableAge seconds), its instances that are
-- not forwarded and not from the node go to the node in one asynchronous store job.
-- Settings: "DicomNodeRouting" and DicomModalities in orthanc.json. Logs name studies by
-- Orthanc ID only (never a patient name or ID). See README.md beside this file.

local MARK = 'DicomNodeRouting'
local PENDING, FORWARDED, FROM_NODE = 'pending', 'forwarded', 'from-node'

local config = GetOrthancConfiguration()
local settings = config['DicomNodeRouting'] or {}
local modality = settings['Modality'] or 'dicom-node'
local recoverChanges = tonumber(settings['RecoverChangesOnStart'] or 0) or 0

local function Log(message)
  print('dicom-node routing: ' .. message)
end

-- AE titles and manufacturers are compared without padding and case.
local function Normalize(value)
  if type(value) ~= 'string' then
    return nil
  end
  local trimmed = string.gsub(value, '^%s*(.-)%s*$', '%1')
  return string.upper(trimmed)
end

local nodeManufacturer = Normalize(settings['NodeManufacturer'] or 'dicom-node')
local nodeAets = {}

local function AddNodeAet(aet)
  local normalized = Normalize(aet)
  if normalized ~= nil and normalized ~= '' then
    nodeAets[normalized] = true
  end
end

local entry = (config['DicomModalities'] or {})[modality]
if type(entry) == 'table' then
  AddNodeAet(entry['AET'] or entry[1])  -- {"AET": ...} or ["AET", "host", port]
end
for _, aet in ipairs(settings['ExtraNodeAets'] or {}) do
  AddNodeAet(aet)
end
local enabled = next(nodeAets) ~= nil
if enabled then
  Log('forwarding stable studies to modality "' .. modality .. '"')
else
  Log('ERROR: DicomModalities has no entry "' .. modality .. '": nothing is forwarded')
end

local function IsFromNode(remoteAet, manufacturer)
  local aet = Normalize(remoteAet)
  if aet ~= nil and nodeAets[aet] then
    return true
  end
  return Normalize(manufacturer) == nodeManufacturer
end

-- Parsed answer of Orthanc's own REST API, or nil when the resource does not exist (any more).
local function Get(uri)
  local ok, answer = pcall(RestApiGet, uri, true)
  if not ok or answer == nil or answer == '' then
    return nil
  end
  return ParseJson(answer)
end

local function Marks(instanceId)
  return Get('/instances/' .. instanceId .. '/metadata?expand')
end

local function SetMark(instanceId, mark)
  RestApiPut('/instances/' .. instanceId .. '/metadata/' .. MARK, mark, true)
end

-- Marks of a study's instances: the ones to send, and counts of those left alone.
local function Sort(studyId, instances)
  local fromNodeSeries = {}
  for _, series in ipairs(Get('/studies/' .. studyId .. '/series') or {}) do
    fromNodeSeries[series['ID']] = IsFromNode(nil, series['MainDicomTags']['Manufacturer'])
  end
  local send, forwarded, fromNode = {}, 0, 0
  for _, instance in ipairs(instances) do
    local id = instance['ID']
    local metadata = Marks(id) or {}
    local mark = metadata[MARK]
    if mark == FORWARDED then
      forwarded = forwarded + 1
    elseif mark == FROM_NODE then
      fromNode = fromNode + 1
    elseif IsFromNode(metadata['RemoteAET'], nil) or fromNodeSeries[instance['ParentSeries']] then
      SetMark(id, FROM_NODE)  -- stored before this script ran: mark it now
      fromNode = fromNode + 1
    else
      table.insert(send, id)
    end
  end
  return send, forwarded, fromNode
end

local jobStudies = {}  -- job ID -> study ID, for the log (lost at a restart: then looked up)

local function RouteStudy(studyId, why)
  local instances = Get('/studies/' .. studyId .. '/instances')
  if instances == nil then
    Log('study ' .. studyId .. ' (' .. why .. ') is gone: nothing to forward')
    return
  end
  local send, forwarded, fromNode = Sort(studyId, instances)
  local left = string.format('%d already forwarded, %d from the node', forwarded, fromNode)
  if #send == 0 then
    Log('study ' .. studyId .. ' (' .. why .. '): nothing new to forward; ' .. left)
    return
  end
  local request = DumpJson({ Resources = send, Asynchronous = true })
  local answer = RestApiPost('/modalities/' .. modality .. '/store', request, true)
  local job = answer and ParseJson(answer)
  if job == nil or job['ID'] == nil then
    Log('ERROR: study ' .. studyId .. ': no store job could be created; '
        .. #send .. ' instance(s) stay pending')
    return
  end
  for _, id in ipairs(send) do
    SetMark(id, FORWARDED)
  end
  jobStudies[job['ID']] = studyId
  Log(string.format('study %s (%s): forwarding %d instance(s) to "%s" in job %s; %s',
                    studyId, why, #send, modality, job['ID'], left))
end

local function SafeRoute(studyId, why)
  local ok, err = pcall(RouteStudy, studyId, why)
  if not ok then
    Log('ERROR: study ' .. studyId .. ': ' .. tostring(err))
  end
end

function OnStoredInstance(instanceId, tags, metadata, origin)
  if not enabled then
    return
  end
  local mark = metadata[MARK]
  if mark == FORWARDED or mark == FROM_NODE then
    return
  end
  if IsFromNode(origin['RemoteAet'], tags['Manufacturer']) then
    SetMark(instanceId, FROM_NODE)
  else
    SetMark(instanceId, PENDING)
  end
end

function OnStableStudy(studyId, tags, metadata)
  -- tags hold the patient's name: never log them
  if enabled then
    SafeRoute(studyId, 'stable')
  end
end

-- A store job of ours (towards the node): its instances, and the study they belong to.
local function OwnJob(jobId)
  local job = Get('/jobs/' .. jobId)
  if job == nil or job['Type'] ~= 'DicomModalityStore' then
    return nil
  end
  local content = job['Content'] or {}
  if not nodeAets[Normalize(content['RemoteAet']) or ''] then
    return nil
  end
  local resources = content['ParentResources'] or {}
  local studyId = jobStudies[jobId]
  if studyId == nil and resources[1] ~= nil then
    studyId = (Get('/instances/' .. resources[1] .. '/study') or {})['ID']
  end
  return job, resources, studyId or '?'
end

-- Moves the marks of a job's instances from one value to the other; returns how many moved.
local function Remark(resources, from, to)
  local count = 0
  for _, id in ipairs(resources) do
    local metadata = Marks(id)  -- nil for a study or series someone sent by hand
    if metadata ~= nil and metadata[MARK] == from then
      SetMark(id, to)
      count = count + 1
    end
  end
  return count
end

function OnJobSuccess(jobId)
  local job, resources, studyId = OwnJob(jobId)
  if job ~= nil then
    Remark(resources, PENDING, FORWARDED)  -- after a resubmitted failure
    Log(string.format('study %s: job %s delivered %d instance(s) to "%s"',
                      studyId, jobId, #resources, modality))
    jobStudies[jobId] = nil
  end
end

function OnJobFailure(jobId)
  local job, resources, studyId = OwnJob(jobId)
  if job ~= nil then
    local count = Remark(resources, FORWARDED, PENDING)
    Log(string.format('ERROR: study %s: job %s to "%s" failed (%s); %d instance(s) are pending '
                      .. 'again and go with the study\'s next stable event or the next start; '
                      .. 'to retry now: POST /jobs/%s/resubmit',
                      studyId, jobId, modality, tostring(job['ErrorDescription']), count, jobId))
  end
end

-- Orthanc forgets at a stop which studies were waiting to become stable: at start, look through
-- the latest changes for instances still pending and forward their studies.
function Initialize()
  if not enabled or recoverChanges <= 0 then
    return
  end
  local last = (Get('/changes?last') or {})['Last'] or 0
  local since = math.max(0, last - recoverChanges)
  local seen = {}
  while true do
    local page = Get('/changes?since=' .. since .. '&limit=1000')
    if page == nil or #page['Changes'] == 0 then
      break
    end
    for _, change in ipairs(page['Changes']) do
      if change['ChangeType'] == 'NewInstance' and (Marks(change['ID']) or {})[MARK] == PENDING then
        local studyId = (Get('/instances/' .. change['ID'] .. '/study') or {})['ID']
        if studyId ~= nil and not seen[studyId] then
          seen[studyId] = true
          SafeRoute(studyId, 'not forwarded before the last stop')
        end
      end
    end
    since = page['Last']
    if page['Done'] then
      break
    end
  end
end
