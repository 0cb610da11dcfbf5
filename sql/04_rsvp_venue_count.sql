-- Course program: count the RSVPs of each batch, and those with a venue (lab 10, step 3:
-- `lines.count().pprint()` and `slines.count().pprint()` with `StreamingContext(sc, 10)`).
-- sql/quickstart.sql extracts the venues themselves; 04_rsvp_venues_to_files.sql saves them.
--
--   cargo run -- run sql/04_rsvp_venue_count.sql
--
-- A DStream batch of 10 seconds is a processing-time window here: every RSVP counts in the
-- 10-second window of the batch that read it. Update mode prints, after each batch, the counts of
-- the windows it changed. The bundled files are all there at start, so with available_now they are
-- read in one batch and one row comes out: 24 RSVPs, 22 with a venue. To watch the directory
-- instead, leave out the trigger (or set trigger = '10 seconds') and copy files into it.

CREATE TABLE rsvps (value VARCHAR)
WITH (connector = 'files', format = 'text', path = 'data/rsvps');

CREATE TABLE rsvp_counts
WITH (connector = 'console', output_mode = 'update', trigger = 'available_now', truncate = 'false');

INSERT INTO rsvp_counts
SELECT window(current_timestamp(), '10 seconds') AS batch,
       count(*) AS rsvps,
       count(json_get_str(value, 'venue', 'venue_name')) AS with_venue
FROM rsvps
GROUP BY window(current_timestamp(), '10 seconds');
