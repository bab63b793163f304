-- Run and replay streams by creation time, for the sweeper: after its first pass it
-- looks only at streams young enough to be running still (created within the longest
-- run deadline plus its grace, or still open when it last looked), instead of
-- probing the last event of every stream ever created (1.9 s per sweep at 140,000
-- streams, growing with the log, every 30 s on every replica).
CREATE INDEX IF NOT EXISTS streams_runs_by_creation ON streams (created_at)
    WHERE category IN ('run', 'replay');
