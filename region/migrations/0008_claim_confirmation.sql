-- 0008_claim_confirmation: a claim granted to another region is confirmed
-- when the user or workspace it was for reaches this region's directory.
--
-- A region that claimed a key here and then failed to create what it was for
-- would otherwise hold the key forever. Claims made with their entity in one
-- transaction (this region's own) are confirmed from the start; one still
-- unconfirmed after a day may be taken by a new claimant. The day is far
-- longer than any directory delay short of a region being cut off for it.
ALTER TABLE claims ADD COLUMN confirmed boolean NOT NULL DEFAULT true;
