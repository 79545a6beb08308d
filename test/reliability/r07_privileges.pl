# r07_privileges.pl: suite 7 of "Proven reliability".  The application role
# (member of qes_sign_app, with qes_sign.verwaltung set) tries every
# forbidden path: direct writes to requests, signers, the audit trail and
# the queues; reading another tenant's rows (tables, views, timeline);
# reading secrets; calling every function that is not granted to it
# (admin, worker-internal); downloading another tenant's archive.  Each
# must be refused with the right SQLSTATE (42501) or read as missing
# (P0002 / no rows), and nothing may change (fingerprint of every
# qes_sign table, audit chain).  QES_SCALE has no effect here (the set of
# paths is fixed and small).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use FindBin;
use lib "$FindBin::RealBin/../perl", $FindBin::RealBin;
use Reliability;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = fixture_node('r07');

# fixture: two tenants, a request in every status in each, archive rows
# rt (fixture_node loaded the shared fixtures): this script's own
$node->safe_psql('postgres', <<'SQL');
CREATE EXTENSION qes_sign;
GRANT USAGE ON SCHEMA rt TO PUBLIC;
CREATE FUNCTION rt.uuid(n int) RETURNS uuid LANGUAGE sql IMMUTABLE AS $$ SELECT lpad(to_hex(n), 32, '0')::uuid $$;
CREATE FUNCTION rt.signers(n int DEFAULT 2) RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_agg(jsonb_build_object('first_name', 'V' || i, 'last_name', 'N' || i,
                     'email', 'signer' || i || '@example.org') ORDER BY i) FROM generate_series(1, n) i $$;
CREATE FUNCTION rt.drive(id uuid, target qes_sign.anfrage_status, tenant text) RETURNS qes_sign.anfrage_status
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM qes_sign.create_request(tenant, 'Mietvertrag', rt.pdf(), rt.signers(), id => id);
    CASE target
    WHEN 'offen' THEN NULL;
    WHEN 'in_signatur' THEN PERFORM qes_sign.apply_signature_request(id, rt.sr(id, 'OPEN', '{OPEN,OPEN}', '{1}'));
    WHEN 'vollstaendig' THEN PERFORM qes_sign.apply_signature_request(id, rt.sr(id, 'SIGNED', '{SIGNED,SIGNED}'));
    WHEN 'archiviert' THEN
        PERFORM qes_sign.apply_signature_request(id, rt.sr(id, 'SIGNED', '{SIGNED,SIGNED}'));
        INSERT INTO qes_sign.archive_objects (request_id, kind, bucket, key, sha256, size, content_type, verified_at)
        SELECT id, k, 'archive', tenant || '/2026/' || id || '/' || k, sha256(k::bytea), 1, 'application/pdf', now()
          FROM unnest(ARRAY['signed_pdf', 'protocol_pdf', 'protocol_json', 'record_json']) k;
        UPDATE qes_sign.signatur_anfragen a SET status = 'archiviert', archived_at = now() WHERE a.id = drive.id;
    WHEN 'abgebrochen' THEN PERFORM qes_sign.apply_signature_request(id, rt.sr(id, 'DECLINED', '{DECLINED,OPEN}'));
    END CASE;
    RETURN (SELECT status FROM qes_sign.signatur_anfragen a WHERE a.id = drive.id);
END $$;
SELECT rt.drive(rt.uuid(t * 10 + s), (enum_range(NULL::qes_sign.anfrage_status))[s], 'hv-' || t)
  FROM generate_series(1, 2) t, generate_series(1, 5) s;

-- rt.try runs a statement as the caller: 'ok:<rows>' or the SQLSTATE
CREATE FUNCTION rt.try(sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE n bigint;
BEGIN
    EXECUTE sql;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN 'ok:' || n;
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE;
END $$;
-- rt.count: the number of rows a query returns, as the caller
CREATE FUNCTION rt.count(sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE n bigint;
BEGIN
    EXECUTE 'SELECT count(*) FROM (' || sql || ') x' INTO n;
    RETURN 'rows:' || n;
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE;
END $$;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA rt TO PUBLIC;

-- fingerprint of every qes_sign table (superuser, no RLS)
CREATE TABLE rt.before AS SELECT * FROM rt.fingerprint();
CREATE ROLE r07_app LOGIN IN ROLE qes_sign_app;
SQL

is($node->safe_psql('postgres', q{SELECT string_agg(status::text, ',' ORDER BY id) FROM qes_sign.signatur_anfragen WHERE verwaltung = 'hv-2'}),
	'offen,in_signatur,vollstaendig,archiviert,abgebrochen', 'fixture: tenant hv-2 has a request in every status');

# the attempts: [label, statement, how (try|count), expected]
my $own = "rt.uuid(11)";     # hv-1, offen (the session's tenant)
my $other = "rt.uuid(21)";   # hv-2, offen
my $other_arch = "rt.uuid(24)";
my @attempts = (
	# direct writes
	[ 'UPDATE signatur_anfragen.status (own)', "UPDATE qes_sign.signatur_anfragen SET status = 'abgebrochen' WHERE id = $own", '42501' ],
	[ 'UPDATE signatur_anfragen.status (other)', "UPDATE qes_sign.signatur_anfragen SET status = 'abgebrochen' WHERE id = $other", '42501' ],
	[ 'UPDATE signatur_anfragen.title', "UPDATE qes_sign.signatur_anfragen SET title = 'x'", '42501' ],
	[ 'INSERT signatur_anfragen', "INSERT INTO qes_sign.signatur_anfragen (id, verwaltung, title) VALUES (gen_random_uuid(), 'hv-1', 'x')", '42501' ],
	[ 'DELETE signatur_anfragen', "DELETE FROM qes_sign.signatur_anfragen", '42501' ],
	[ 'UPDATE signers.status', "UPDATE qes_sign.signers SET status = 'signed' WHERE request_id = $own", '42501' ],
	[ 'UPDATE signers.email', "UPDATE qes_sign.signers SET email = 'evil\@example.org'", '42501' ],
	[ 'INSERT signers', "INSERT INTO qes_sign.signers (request_id, position, email, first_name, last_name) VALUES ($own, 9, 'e\@x.org', 'a', 'b')", '42501' ],
	[ 'DELETE signers', "DELETE FROM qes_sign.signers", '42501' ],
	[ 'INSERT audit_log', "INSERT INTO qes_sign.audit_log (event) VALUES ('forged')", '42501' ],
	[ 'UPDATE audit_log', "UPDATE qes_sign.audit_log SET event = 'forged'", '42501' ],
	[ 'DELETE audit_log', "DELETE FROM qes_sign.audit_log", '42501' ],
	[ 'TRUNCATE audit_log', "TRUNCATE qes_sign.audit_log", '42501' ],
	[ 'UPDATE audit_head', "UPDATE qes_sign.audit_head SET seq = 0", '42501' ],
	[ 'TRUNCATE signatur_anfragen', "TRUNCATE qes_sign.signatur_anfragen CASCADE", '42501' ],
	[ 'INSERT work_items', "INSERT INTO qes_sign.work_items (request_id, kind) VALUES ($own, 'archive')", '42501' ],
	[ 'INSERT callback_inbox', "INSERT INTO qes_sign.callback_inbox (source, dedupe_key) VALUES ('callback', 'x')", '42501' ],
	[ 'INSERT archive_objects', "INSERT INTO qes_sign.archive_objects (request_id, kind, bucket, key, sha256, size) VALUES ($own, 'signed_pdf', 'b', 'k', '\\x00', 1)", '42501' ],
	[ 'DELETE archive_objects', "DELETE FROM qes_sign.archive_objects", '42501' ],
	[ 'UPDATE vorgangstypen', "UPDATE qes_sign.vorgangstypen SET retention_years = 0", '42501' ],
	[ 'SELECT work_items', "SELECT * FROM qes_sign.work_items", '42501' ],
	[ 'SELECT callback_inbox', "SELECT * FROM qes_sign.callback_inbox", '42501' ],
	[ 'SELECT archive_staging', "SELECT * FROM qes_sign.archive_staging", '42501' ],
	[ 'SELECT audit_head', "SELECT * FROM qes_sign.audit_head", '42501' ],
	[ 'SELECT operations', "SELECT * FROM qes_sign.operations", '42501' ],
	[ 'SELECT request_errors', "SELECT * FROM qes_sign.request_errors", '42501' ],
	[ 'ALTER TABLE disable RLS', "ALTER TABLE qes_sign.signatur_anfragen DISABLE ROW LEVEL SECURITY", '42501' ],
	[ 'ALTER TABLE audit_log disable trigger', "ALTER TABLE qes_sign.audit_log DISABLE TRIGGER ALL", '42501' ],
	[ 'SET session_replication_role', "SET session_replication_role = replica", '42501' ],
	# another tenant's rows read as missing
	[ 'read other signatur_anfragen', "SELECT * FROM qes_sign.signatur_anfragen WHERE verwaltung = 'hv-2' OR id = $other", 'count', 'rows:0' ],
	[ 'read other signers', "SELECT * FROM qes_sign.signers WHERE request_id IN (SELECT rt.uuid(20 + s) FROM generate_series(1, 5) s)", 'count', 'rows:0' ],
	[ 'read other audit_log', "SELECT * FROM qes_sign.audit_log WHERE verwaltung = 'hv-2' OR request_id = $other", 'count', 'rows:0' ],
	[ 'read other archive_objects', "SELECT * FROM qes_sign.archive_objects WHERE request_id = $other_arch", 'count', 'rows:0' ],
	[ 'read other overview', "SELECT * FROM qes_sign.overview WHERE verwaltung = 'hv-2'", 'count', 'rows:0' ],
	[ 'read other timeline', "SELECT * FROM qes_sign.timeline($other)", 'count', 'rows:0' ],
	[ 'read other timeline (archived)', "SELECT * FROM qes_sign.timeline($other_arch)", 'count', 'rows:0' ],
	[ 'only own tenant visible', "SELECT * FROM qes_sign.signatur_anfragen WHERE verwaltung <> 'hv-1'", 'count', 'rows:0' ],
	[ 'download other (archived)', "SELECT qes_sign.download($other_arch, 'signed_pdf')", 'P0002' ],
	[ 'download other (protocol_json)', "SELECT qes_sign.download($other_arch, 'protocol_json')", 'P0002' ],
	[ 'remind other', "SELECT qes_sign.remind($other)", 'P0002' ],
	[ 'withdraw other', "SELECT qes_sign.withdraw($other, 'x')", 'P0002' ],
	[ 'restart other', "SELECT qes_sign.restart(rt.uuid(25))", 'P0002' ],
	[ 'replace_signer other', qq{SELECT qes_sign.replace_signer($other, 'signer1\@example.org', '{"first_name": "a", "last_name": "b", "email": "c\@example.org"}')}, 'P0002' ],
	[ 'create for other tenant', "SELECT qes_sign.create_request('hv-2', 't', rt.pdf(), rt.signers())", '42501' ],
	# secrets
	(map { ([ "SHOW $_", "SHOW $_", '42501' ],
			[ "current_setting $_", "SELECT current_setting('$_')", '42501' ],
			[ "pg_settings $_", "SELECT * FROM pg_settings WHERE name = '$_'", 'count', 'rows:0' ],
			[ "SET $_ (a reload-only setting)", "SET $_ = 'mine'", '55P02' ],
			[ "set_config $_", "SELECT set_config('$_', 'mine', false)", '55P02' ]) }
	  qw(qes_sign.callback_secret qes_sign.webhook_secrets qes_sign.skribble_api_key
	  qes_sign.skribble_username qes_sign.s3_secret_key qes_sign.s3_access_key)),
	[ 'pg_settings any secret', "SELECT * FROM pg_settings WHERE name LIKE 'qes_sign.%secret%' OR name LIKE 'qes_sign.%key%'", 'count', 'rows:0' ],
	[ 'pg_file_settings', "SELECT * FROM pg_file_settings", '42501' ],
	[ 'pg_read_file postgresql.conf', "SELECT pg_read_file('postgresql.conf')", '42501' ],
	[ 'SET test_clock', "SET qes_sign.test_clock = '2000-01-01'", '42501' ],
	# allowed
	[ 'wake (allowed)', "SELECT qes_sign.wake()", 'ok:1' ],
	[ 'read own (allowed)', "SELECT * FROM qes_sign.signatur_anfragen", 'count', 'rows:5' ],
);

# every function of qes_sign the app is not granted, called with NULLs
# from subqueries (a constant NULL would let the planner fold a STRICT
# function away before the privilege check): refused (42501)
my @granted = qw(create_request remind withdraw replace_signer restart receive_callback receive_webhook
  timeline wake clock acting_role transitions_c download retention_until);
my $granted = join(',', map { "'$_'" } @granted);
my @funcs = split /\n/, $node->safe_psql('postgres', qq{
	SELECT format('%s|SELECT qes_sign.%I(%s)', p.proname, p.proname,
	              (SELECT coalesce(string_agg(CASE WHEN p.provariadic <> 0 AND o = p.pronargs THEN 'VARIADIC ' ELSE '' END
	                                          || '(SELECT NULL::' || format_type(t, NULL) || ')', ', ' ORDER BY o), '')
	                 FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY a(t, o)))
	  FROM pg_proc p
	 WHERE p.pronamespace = 'qes_sign'::regnamespace AND p.prokind = 'f' AND p.proname NOT IN ($granted)
	   AND p.prorettype <> 'trigger'::regtype
	 ORDER BY 1});
my %fn = map { (split /\|/, $_, 2)[0] => 1 } @funcs;
for my $must (qw(purge verify_audit_chain apply_signature_request callback_urls _claim _record_result
	_s3_request _tick _transition _emit _take_callback _enqueue counters callback_url _verify_callback
	_verify_webhook _worker_started))
{
	ok($fn{$must}, "function $must exists and is not granted to the app");
}
push @attempts, map { my ($n, $s) = split /\|/, $_, 2; [ "call $n", $s, '42501' ] } @funcs;

# run them all in one session as the app, with its tenant set
my $sql = "SET ROLE r07_app;\nSET qes_sign.verwaltung = 'hv-1';\n";
for my $i (0 .. $#attempts)
{
	my ($label, $stmt, $how) = @{ $attempts[$i] };
	my $f = $how eq 'count' ? 'rt.count' : 'rt.try';
	(my $q = $stmt) =~ s/\$\$/\$x\$/g;
	$sql .= "SELECT $i || '|' || $f(\$q\$$q\$q\$);\n";
}
$sql .= "RESET ROLE;\n";
my ($out, $err) = ('', '');
$node->psql('postgres', $sql, stdout => \$out, stderr => \$err, on_error_die => 1);
my %got = map { split /\|/, $_, 2 } grep { /^\d+\|/ } split /\n/, $out;
my ($refused, $missing, $allowed, $bad) = (0, 0, 0, 0);
for my $i (0 .. $#attempts)
{
	my ($label, $stmt, $how, $want) = @{ $attempts[$i] };
	$want //= $how;
	my $g = $got{$i} // 'no answer';
	is($g, $want, "$label: $want") or $bad++;
	if ($want =~ /^(42501|55P02)$/) { $refused++ } elsif ($want =~ /^(P0002|rows:0)$/) { $missing++ } else { $allowed++ }
}

# nothing changed: every table's rows, the audit chain
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM (SELECT * FROM rt.before EXCEPT SELECT * FROM rt.fingerprint()) d}),
	'0', 'no qes_sign table changed (row counts and contents)');
is($node->safe_psql('postgres', 'SELECT ok FROM qes_sign.verify_audit_chain()'), 't', 'audit chain ok');
my $log = PostgreSQL::Test::Utils::slurp_file($node->logfile);
unlike($log, qr/terminated by signal|PANIC/, 'server never crashed');
$node->stop;

note(sprintf('COUNTS r07_privileges: attempts=%d refused_42501_55P02=%d read_as_missing=%d allowed=%d wrong=%d functions_checked=%d',
		scalar(@attempts), $refused, $missing, $allowed, $bad, scalar(@funcs)));
done_testing();
