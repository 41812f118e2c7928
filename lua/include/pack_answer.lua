-- pack_answer: the answer to a claim (or a redeemed code), made as text once and stored, so a replay returns it
-- byte for byte: {claim_id, coupons:[{coupon_id, template_id, valid_from, valid_until}]}. The pack's entries in
-- order, count coupons each, numbered "<claim_id>.1", ".2", ...; an entry's validity is fixed, or valid_days
-- from now.
local function pack_answer(claim_id, pack_json, now)
  local coupons_json, n = {}, 0
  for _, entry in ipairs(cjson.decode(pack_json)) do
    local valid_from, valid_until
    if entry.valid_days then
      valid_from, valid_until = now, now + entry.valid_days * 86400
    else
      valid_from, valid_until = entry.valid_from, entry.valid_until
    end
    for _ = 1, entry.count do
      n = n + 1
      coupons_json[n] = string.format(
        '{"coupon_id":"%s.%d","template_id":%s,"valid_from":%d,"valid_until":%d}',
        claim_id, n, cjson.encode(entry.template_id), valid_from, valid_until)
    end
  end
  return string.format('{"claim_id":"%s","coupons":[%s]}', claim_id, table.concat(coupons_json, ","))
end
