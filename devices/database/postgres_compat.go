package database

// compatSchema is the "database" component's PostgreSQL migrations: the
// SQLite functions the stores' SQL calls, with SQLite's meaning, so that
// most statements are the same in both dialects. JSON lives in TEXT
// columns, as on SQLite.
var compatSchema = []string{
	// 1: json_patch (RFC 7396 merge patch: a null removes a key, objects
	// merge recursively, anything else replaces), json_valid, json_type,
	// json_each over TEXT (key and value as text), instr.
	`CREATE FUNCTION tether_merge_patch(target jsonb, patch jsonb) RETURNS jsonb
	LANGUAGE plpgsql IMMUTABLE AS $$
	DECLARE
		k text;
		v jsonb;
		r jsonb;
	BEGIN
		IF patch IS NULL OR jsonb_typeof(patch) <> 'object' THEN
			RETURN patch;
		END IF;
		IF target IS NULL OR jsonb_typeof(target) <> 'object' THEN
			r := '{}'::jsonb;
		ELSE
			r := target;
		END IF;
		FOR k, v IN SELECT * FROM jsonb_each(patch) LOOP
			IF jsonb_typeof(v) = 'null' THEN
				r := r - k;
			ELSE
				r := jsonb_set(r, ARRAY[k], tether_merge_patch(r -> k, v));
			END IF;
		END LOOP;
		RETURN r;
	END $$;
	CREATE FUNCTION json_patch(target text, patch text) RETURNS text
	LANGUAGE sql IMMUTABLE AS $$ SELECT tether_merge_patch(target::jsonb, patch::jsonb)::text $$;
	CREATE FUNCTION json_valid(t text) RETURNS boolean
	LANGUAGE plpgsql IMMUTABLE AS $$
	BEGIN
		PERFORM t::jsonb;
		RETURN t IS NOT NULL;
	EXCEPTION WHEN others THEN
		RETURN false;
	END $$;
	CREATE FUNCTION json_type(t text) RETURNS text
	LANGUAGE sql IMMUTABLE AS $$ SELECT jsonb_typeof(t::jsonb) $$;
	CREATE FUNCTION json_each(t text) RETURNS TABLE(key text, value text)
	LANGUAGE sql IMMUTABLE AS $$ SELECT * FROM jsonb_each_text(t::jsonb) $$;
	CREATE FUNCTION instr(s text, sub text) RETURNS integer
	LANGUAGE sql IMMUTABLE AS $$ SELECT strpos(s, sub) $$;`,
}
