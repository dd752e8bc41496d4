-- The width of the metrics windows.
SELECT window_seconds FROM analytics_settings
