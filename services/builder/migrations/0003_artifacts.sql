-- What a successful build produced: the pushed image, by digest, and its package URL.
ALTER TABLE builds ADD COLUMN image TEXT;
ALTER TABLE builds ADD COLUMN artifact_digest TEXT;
ALTER TABLE builds ADD COLUMN artifact_purl TEXT;
