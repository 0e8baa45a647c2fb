-- PLACEHOLDER on branch 'schedule' only: the number another branch uses (suppress: 0005, bounces: 0006).
-- Drop this file when merging; the real one takes its place.
SELECT 1;
