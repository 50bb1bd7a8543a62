-- The Funko as it was before each Funko UPDATE or DELETE, as views read it:
-- {"name","description","price","category","isDeleted"}. NULL for CREATEs, category events,
-- and events appended before this column existed (views then take the Funko as new).
ALTER TABLE events ADD COLUMN prior TEXT;
