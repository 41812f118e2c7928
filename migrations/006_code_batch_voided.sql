-- A batch's voiding as Redis recorded it (the codes_voided event), apart from its state: reconcile claims a
-- half-done batch (state 'void') before it gives the packs back in Redis, so state alone cannot say whether
-- {a:X}:batches holds "void" or the packs still reserved; restore and reconcile read this instead.
ALTER TABLE code_batches ADD COLUMN voided boolean NOT NULL DEFAULT false;
