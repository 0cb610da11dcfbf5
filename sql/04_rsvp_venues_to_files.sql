-- Course program: save the venue of every RSVP that has one to files (lab 10, submission 2:
-- "change the code so that you save the venue components to a text file", `saveAsTextFiles`).
--
--   cargo run -- run sql/04_rsvp_venues_to_files.sql
--   cat out/venues/*.json
--
-- Each batch's venues land in out/venues as one JSON object per line, each batch exactly once:
-- the checkpoint in out/checkpoints/venues remembers which input files were read and the sink's
-- manifest (out/venues/_tidewater_metadata) which batches were written, so running the file again
-- writes nothing new until new files come into data/rsvps. Delete out/ to start over.
-- To read the result back with SQL:
--   CREATE EXTERNAL TABLE venues STORED AS JSON LOCATION 'out/venues'; SELECT * FROM venues;

CREATE TABLE rsvps (value VARCHAR)
WITH (connector = 'files', format = 'text', path = 'data/rsvps', max_files_per_trigger = '1');

CREATE TABLE venues
WITH (connector = 'files', format = 'json', path = 'out/venues',
      checkpoint_location = 'out/checkpoints/venues', trigger = 'available_now');

INSERT INTO venues
SELECT json_get_int(value, 'venue', 'venue_id') AS venue_id,
       json_get_str(value, 'venue', 'venue_name') AS venue_name,
       json_get_float(value, 'venue', 'lat') AS lat,
       json_get_float(value, 'venue', 'lon') AS lon
FROM rsvps
WHERE json_get(value, 'venue') IS NOT NULL;
