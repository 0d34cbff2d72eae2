-- The PCR values of the last quote the server verified for a device (accepted at enrollment or
-- renewal, or refused by posture and quarantined), as JSON {index: hex}, and when: `device show`
-- and the console compare them with the baseline PCR by PCR.
ALTER TABLE devices ADD COLUMN last_pcrs TEXT;
ALTER TABLE devices ADD COLUMN last_quote_at INTEGER;
