-- period(seconds, name): the label of the UTC period ('hour', 'day', 'month') holding that time
-- and its end (epoch seconds), as rules.period computes it (a test holds them equal). Howard
-- Hinnant's days <-> civil date conversions (proleptic Gregorian).

local function civil_from_days(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
                          - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m, d
end

local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local doy = math.floor((153 * ((m + 9) % 12) + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

local function period(seconds, name)
  local days = math.floor(seconds / 86400)
  local y, m, d = civil_from_days(days)
  if name == 'hour' then
    local hour = math.floor((seconds - days * 86400) / 3600)
    return string.format('%04d-%02d-%02dT%02d', y, m, d, hour), days * 86400 + (hour + 1) * 3600
  elseif name == 'day' then
    return string.format('%04d-%02d-%02d', y, m, d), (days + 1) * 86400
  end
  local label = string.format('%04d-%02d', y, m)
  if m == 12 then y, m = y + 1, 1 else m = m + 1 end
  return label, days_from_civil(y, m, 1) * 86400
end
