# r07_privileges.pl: suite 7 of "Proven reliability".  The application role
# (member of qes_sign_app, with qes_sign.verwaltung set) tries every
# forbidden path: direct writes to requests, signers, the audit trail and
# the queues; reading another tenant's rows (tables, views, timeline);
# reading secrets; calling every function that is not granted to it
# (admin, worker-internal); downloading another tenant's archive.  Each
# must be refused with the right SQLSTATE (42501) or read as missing
# (P0002 / no rows), and nothing may change (fingerprint of every
# qes_sign table, audit chain).  Then the paths of version 1.1, which may
# change state and so come after the fingerprint: a temp-table and
# operator hijack of the SECURITY DEFINER functions, a switch to a tenant
# not granted, a stranger LISTENing on qes_sign, create_request's
# restarted_from as a probe for another tenant's ids, and a callback
# flood.  QES_SCALE has no effect here (the set of paths is fixed and
# small).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use FindBin;
use lib "$FindBin::RealBin/../perl", $FindBin::RealBin;
use Reliability;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP ();
use Time::HiRes qw(sleep);

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

-- rt.err: SQLSTATE, message, detail, hint, column and context of an error, ids masked
CREATE FUNCTION rt.err(sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE st text; msg text; det text; hnt text; col text; ctx text;
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, det = PG_EXCEPTION_DETAIL,
                            hnt = PG_EXCEPTION_HINT, col = COLUMN_NAME, ctx = PG_EXCEPTION_CONTEXT;
    RETURN regexp_replace(regexp_replace(concat_ws(' / ', st, msg, det, hnt, col, ctx),
                          '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}', '<id>', 'g'), '\s+', ' ', 'g');
END $$;
-- rt.msg: 'ok' or SQLSTATE: message (nothing masked)
CREATE FUNCTION rt.msg(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || regexp_replace(SQLERRM, '\s+', ' ', 'g');
END $$;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA rt TO PUBLIC;

-- the application's role holds tenant hv-1 only (version 1.1)
CREATE ROLE r07_app LOGIN IN ROLE qes_sign_app;
SELECT qes_sign.grant_tenant('r07_app', 'hv-1');
-- a role with no grants at all, and a schema the app owns (for its traps)
CREATE ROLE r07_stranger LOGIN;
CREATE SCHEMA r07_evil AUTHORIZATION r07_app;

-- fingerprint of every qes_sign table (superuser, no RLS)
CREATE TABLE rt.before AS SELECT * FROM rt.fingerprint();
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
  timeline wake clock acting_role transitions_c download retention_until _session_tenant my_tenants);
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

###########################################################################
# The paths of version 1.1.  Each check is [path, label, got, want, class]:
# class refused (42501/55P02), missing (P0002/no rows), contained (a hostile
# input that ends harmlessly: not used, not stored, bounded, 54000) or
# allowed (what the app may do, so that a refusal of everything cannot pass).
my %per_path;
my $contained = 0;
sub check
{
	my ($path, $label, $got, $want, $class) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	$class //= $want =~ /^(42501|55P02)$/ ? 'refused' : $want =~ /^(P0002|rows:0)$/ ? 'missing' : 'contained';
	push @attempts, [ "$path: $label" ];
	$per_path{$path}++;
	if    ($class eq 'refused') { $refused++ }
	elsif ($class eq 'missing') { $missing++ }
	elsif ($class eq 'allowed') { $allowed++ }
	else                        { $contained++ }
	return ref $want eq 'Regexp' ? like($got, $want, "$path: $label") || $bad++
	  : is($got, $want, "$path: $label: $want") || $bad++;
}

sub one { return $node->safe_psql('postgres', $_[0]); }

# as_user(user, setup, [label, sql expression]...): the expressions' values
# (text) in one session logged in as user, after the setup statements
sub as_user
{
	my ($user, $setup, @items) = @_;
	my $q = "$setup\n";
	$q .= "SELECT '$_|' || coalesce(($items[$_][1])::text, '<null>');\n" for 0 .. $#items;
	my ($o, $e) = ('', '');
	$node->psql('postgres', $q, stdout => \$o, stderr => \$e, on_error_die => 1,
		extra_params => [ '-U', $user ]);
	my %g = map { split /\|/, $_, 2 } grep { /^\d+\|/ } split /\n/, $o;
	return map { $g{$_} // "no answer: $e" } 0 .. $#items;
}
# dollar-quoted statement text for rt.try / rt.count / rt.err / rt.msg
sub dq { my ($stmt) = @_; $stmt =~ s/\$\$/\$x\$/g; return "\$q\$$stmt\$q\$"; }
# tried / counted: a statement run by rt.try (its SQLSTATE or ok) or rt.count (rows:N)
sub tried   { return 'rt.try(' . dq($_[0]) . ')'; }
sub counted { return 'rt.count(' . dq($_[0]) . ')'; }

my $app_setup = "SET qes_sign.verwaltung = 'hv-1';";
my $signers = q{'[{"first_name": "A", "last_name": "B", "email": "signer1@example.org"}]'};
my %id = map { ($_ => one("SELECT rt.uuid($_)")) } (11 .. 15, 21 .. 25);

# --- tenant switch: a tenant the role does not hold
{
	my @t = (
		[ 'remind own (hv-1) with hv-2 selected', tried("SELECT qes_sign.remind($own)"), '42501' ],
		[ 'remind hv-2', tried("SELECT qes_sign.remind($other)"), '42501' ],
		[ 'withdraw hv-2', tried("SELECT qes_sign.withdraw($other, 'x')"), '42501' ],
		[ 'withdraw own', tried("SELECT qes_sign.withdraw($own, 'x')"), '42501' ],
		[ 'download hv-2 (archived)', tried("SELECT qes_sign.download($other_arch)"), '42501' ],
		[ 'download own (archived)', tried("SELECT qes_sign.download(rt.uuid(14))"), '42501' ],
		[ 'create_request hv-2', tried("SELECT qes_sign.create_request('hv-2', 't', rt.pdf(), rt.signers())"), '42501' ],
		[ 'create_request hv-1', tried("SELECT qes_sign.create_request('hv-1', 't', rt.pdf(), rt.signers())"), '42501' ],
		[ 'replace_signer hv-2', tried(qq{SELECT qes_sign.replace_signer($other, 'signer1\@example.org', '{"first_name": "a", "last_name": "b", "email": "c\@example.org"}')}), '42501' ],
		[ 'restart hv-2', tried("SELECT qes_sign.restart(rt.uuid(25))"), '42501' ],
		[ 'read signatur_anfragen', counted('SELECT * FROM qes_sign.signatur_anfragen'), 'rows:0' ],
		[ 'read overview', counted('SELECT * FROM qes_sign.overview'), 'rows:0' ],
		[ 'read audit_log', counted('SELECT * FROM qes_sign.audit_log'), 'rows:0' ],
		[ 'read signers', counted('SELECT * FROM qes_sign.signers'), 'rows:0' ],
		[ 'read archive_objects', counted('SELECT * FROM qes_sign.archive_objects'), 'rows:0' ],
		[ 'read timeline hv-2', counted("SELECT * FROM qes_sign.timeline($other)"), 'rows:0' ],
	);
	my @g = as_user('r07_app', "SET qes_sign.verwaltung = 'hv-2';", map { [ $_->[0], $_->[1] ] } @t);
	check('tenant_switch', "$t[$_][0]", $g[$_], $t[$_][2]) for 0 .. $#t;

	# no tenant selected, an unknown one, and one revoked
	my @u = as_user('r07_app', "RESET qes_sign.verwaltung;",
		[ 'unset: create', tried("SELECT qes_sign.create_request('hv-1', 't', rt.pdf(), rt.signers())") ],
		[ 'unset: read', counted('SELECT * FROM qes_sign.signatur_anfragen') ],
		[ 'my_tenants', "(SELECT string_agg(t, ',') FROM qes_sign.my_tenants() t)" ],
		[ 'select hv-9', "set_config('qes_sign.verwaltung', 'hv-9', false)" ],
		[ 'hv-9: create', tried("SELECT qes_sign.create_request('hv-9', 't', rt.pdf(), rt.signers())") ]);
	check('tenant_switch', 'no tenant selected: create_request', $u[0], '42501');
	check('tenant_switch', 'no tenant selected: read', $u[1], 'rows:0');
	check('tenant_switch', 'my_tenants() lists hv-1 only', $u[2], 'hv-1', 'allowed');
	is($u[3], 'hv-9', 'the app selects hv-9, a tenant nobody holds');
	check('tenant_switch', 'a tenant nobody holds (hv-9): create_request', $u[4], '42501');

	one("SELECT qes_sign.revoke_tenant('r07_app', 'hv-1')");
	my @r = as_user('r07_app', $app_setup,
		[ 'remind', tried("SELECT qes_sign.remind($own)") ],
		[ 'read', counted('SELECT * FROM qes_sign.signatur_anfragen') ]);
	one("SELECT qes_sign.grant_tenant('r07_app', 'hv-1')");
	check('tenant_switch', 'revoked hv-1: remind own', $r[0], '42501');
	check('tenant_switch', 'revoked hv-1: read own', $r[1], 'rows:0');
	my @back = as_user('r07_app', $app_setup,
		[ 'read', counted('SELECT * FROM qes_sign.signatur_anfragen') ]);
	check('tenant_switch', 'granted again: reads its 5 requests', $back[0], 'rows:5', 'allowed');
}

# --- restarted_from: another tenant's id reads exactly like an unknown one
{
	my $create = sub {
		"rt.err(" . dq("SELECT qes_sign.create_request('hv-1', 'Neustart', rt.pdf(), rt.signers(), restarted_from => $_[0])") . ")";
	};
	# the ids as literals, so that the statements differ only in the id
	my @g = as_user('r07_app', $app_setup,
		[ 'random', $create->("'" . new_uuid() . "'") ],
		(map { [ "hv-2 $_", $create->("'$id{$_}'") ] } 21 .. 25),
		[ 'own abgebrochen', tried("SELECT qes_sign.create_request('hv-1', 'Neustart', rt.pdf(), rt.signers(), restarted_from => rt.uuid(15))") ]);
	my $unknown = shift @g;
	like($unknown, qr/^P0002 \/ signature request <id> does not exist/, "restarted_from => a random uuid: $unknown");
	my @st = split /,/, one("SELECT string_agg(status::text, ',' ORDER BY id) FROM qes_sign.signatur_anfragen WHERE verwaltung = 'hv-2'");
	for my $n (21 .. 25)
	{
		my $g = shift @g;
		check('restarted_from_probe', "hv-2's $st[$n - 21] request: the error of an unknown id", $g, $unknown, 'missing');
	}
	check('restarted_from_probe', 'its own abgebrochen request (allowed)', $g[0], 'ok:1', 'allowed');
	is(one("SELECT count(*) FROM qes_sign.signatur_anfragen WHERE restarted_from = rt.uuid(15) AND verwaltung = 'hv-1'"),
		'1', 'the restart of its own request is recorded with restarted_from');
	is(one("SELECT count(*) FROM qes_sign.signatur_anfragen WHERE restarted_from IN (SELECT rt.uuid(n) FROM generate_series(21, 25) n)"),
		'0', "no request restarted from another tenant's");

	# the row lock: _lock_request checks the tenant before it locks, so a
	# row of hv-2 locked elsewhere (the worker, hv-2's own session) reads as
	# unknown at once instead of making the probe wait or time out
	my $holder = $node->background_psql('postgres');
	$holder->query_safe("BEGIN; SELECT 1 FROM qes_sign.signatur_anfragen WHERE id = rt.uuid(21) FOR UPDATE;");
	my @l = as_user('r07_app', "$app_setup SET lock_timeout = '300ms';",
		[ 'random', $create->("'" . new_uuid() . "'") ],
		[ 'locked hv-2', $create->("'$id{21}'") ],
		[ 'locked hv-2, remind', "rt.err(" . dq("SELECT qes_sign.remind('$id{21}')") . ")" ],
		[ 'random, remind', "rt.err(" . dq("SELECT qes_sign.remind('" . new_uuid() . "')") . ")" ]);
	$holder->query_safe('COMMIT');
	$holder->quit;
	check('restarted_from_probe', "restarted_from => hv-2's request while its row is locked: the error of an unknown id",
		$l[1], $l[0], 'missing');
	check('restarted_from_probe', "remind(hv-2's request) while its row is locked: the error of an unknown id",
		$l[2], $l[3], 'missing');
	like($l[0], qr/^P0002 /, 'with the lock held, an unknown id still reads as unknown');
	note("with hv-2's row locked: restarted_from gives $l[1]; remind gives $l[2]");
}

# --- callback flood: signed URLs with unsigned query values, big bodies,
# callbacks for requests that have ended
{
	my %url = map { my ($n, $t) = @$_; ("$n/$t" => one("SELECT qes_sign.callback_url(rt.uuid($n), '$t')")) }
	  ([11, 'update'], [11, 'success'], [13, 'update'], [14, 'update'], [15, 'update'], [25, 'update']);
	my $before = one('SELECT count(*) FROM qes_sign.callback_inbox');
	my $flood = sub {
		my ($u, $t, $extra) = @_;
		return "(SELECT count(*) FILTER (WHERE NOT (r).duplicate) || '/' || count(*) FROM "
		  . "(SELECT qes_sign.receive_callback(replace($u, 'SKRIBBLE_DOCUMENT_ID', 'doc-' || g)$extra) r "
		  . 'FROM generate_series(1, 30) g) x)';
	};
	my $big = sub { tried("SELECT qes_sign.receive_callback('$url{'11/update'}', convert_to(repeat('x', $_[0]), 'UTF8'))") };
	my @g = as_user('r07_app', $app_setup,
		[ 'update x30', $flood->("'$url{'11/update'}'", 'update', '') ],
		[ 'success x30', $flood->("replace('$url{'11/success'}', 'SKRIBBLE_SIGNATURE_ID', 'sig-' || g)", 'success', '') ],
		[ '2 MB', $big->(2 * 1024 * 1024) ],
		[ '65537', $big->(65537) ],
		[ '65536', $big->(65536) ],
		[ 'webhook 2 MB', tried("SELECT qes_sign.receive_webhook('{}', convert_to(repeat('x', 2097152), 'UTF8'))") ],
		(map { [ $_, "(SELECT (r).duplicate FROM qes_sign.receive_callback('$url{$_}') r)::text" ] } qw(13/update 14/update 15/update 25/update)));
	check('callback_flood', '30 update callbacks, 30 document= values: stored once', $g[0], '1/30');
	check('callback_flood', '30 success callbacks, 30 document= and signature= values: stored once', $g[1], '1/30');
	check('callback_flood', 'unprocessed inbox rows of the request: one per type',
		one("SELECT string_agg(callback_type || '=' || n, ' ' ORDER BY callback_type) FROM (SELECT callback_type, count(*) n "
			  . "FROM qes_sign.callback_inbox WHERE request_id = rt.uuid(11) AND processed_at IS NULL GROUP BY 1) x"),
		'success=1 update=1');
	check('callback_flood', 'a 2 MB body', $g[2], '54000');
	check('callback_flood', 'a body of 65537 bytes', $g[3], '54000');
	check('callback_flood', 'a body of 65536 bytes (the limit)', $g[4], 'ok:1', 'allowed');
	check('callback_flood', 'a 2 MB webhook body', $g[5], '54000');
	check('callback_flood', 'a callback for a vollstaendig request: acknowledged as duplicate', $g[6], 'true');
	check('callback_flood', 'a callback for an archiviert request: acknowledged as duplicate', $g[7], 'true');
	check('callback_flood', 'a callback for an abgebrochen request: acknowledged as duplicate', $g[8], 'true');
	check('callback_flood', "a callback for hv-2's abgebrochen request: acknowledged as duplicate", $g[9], 'true');
	check('callback_flood', 'nothing stored for requests that ended',
		one('SELECT count(*) FROM qes_sign.callback_inbox WHERE request_id IN (rt.uuid(13), rt.uuid(14), rt.uuid(15), rt.uuid(25))'), '0');
	check('callback_flood', 'the inbox grew by 2 rows in all', one('SELECT count(*) FROM qes_sign.callback_inbox') - $before, 2);
}

# --- a stranger LISTENs while the app works: ids, events and statuses only
{
	my $listener = $node->background_psql('postgres', extra_params => [ '-U', 'r07_stranger' ]);
	$listener->query_safe('LISTEN qes_sign');
	is($listener->query_safe('SELECT current_user'), 'r07_stranger', 'the listener is the stranger');
	my ($new) = as_user('r07_app', $app_setup,
		[ 'create', q{qes_sign.create_request('hv-1', 'Mietvertrag Geheimweg 7, Familie Mustermann', rt.pdf(),
			'[{"first_name": "Erika", "last_name": "Mustermann", "email": "erika.mustermann@example.org"}]',
			message => 'Bitte bis Freitag unterschreiben, Frau Mustermann')} ]);
	as_user('r07_app', $app_setup, [ 'remind', tried("SELECT qes_sign.remind('$new')") ],
		[ 'withdraw', tried("SELECT qes_sign.withdraw('$new', 'Mieterin Mustermann zieht nicht ein')") ]);
	# Skribble's decline message (free text of a signer) reaches the trail
	one(q{SELECT qes_sign.apply_signature_request(rt.uuid(12), jsonb_set(rt.sr(rt.uuid(12), 'DECLINED', '{DECLINED,OPEN}'),
		'{signatures,0,decline_message}', '"Ich, Max Mustermann, unterschreibe nicht"'))});
	my ($text, @notes) = ('');
	my $declined = $id{12};
	for (1 .. 25)
	{
		$text .= $listener->query_safe('SELECT 1');
		@notes = $text =~ /Asynchronous notification "qes_sign" with payload "(.*?)" received/g;
		last if grep { /\Q$declined\E/ } @notes;
		sleep 0.2;
	}
	$listener->quit;
		check('listen_stranger', 'the stranger received the notifications of the new and the declined request',
		(scalar(grep { /\Q$new\E/ } @notes) >= 2 && scalar(grep { /\Q$declined\E/ } @notes) >= 1) ? 'yes' : "no: @notes", 'yes');
	my @keys = map { my $j = eval { JSON::PP::decode_json($_) }; $j ? join(',', sort keys %$j) : "not JSON: $_" } @notes;
	check('listen_stranger', 'every payload is exactly {id, event, status}',
		join(' ', grep { $_ ne 'event,id,status' } @keys) || 'all', 'all');
	check('listen_stranger', 'no e-mail address in a payload', join(' ', grep { /@/ } @notes) || 'none', 'none');
	check('listen_stranger', 'no tenant in a payload', join(' ', grep { /hv-\d/ } @notes) || 'none', 'none');
	check('listen_stranger', 'no name, title, message, reason or decline text in a payload',
		join(' ', grep { /Mustermann|Geheimweg|Freitag|Mieterin|unterschreibe/ } @notes) || 'none', 'none');
	my @t = as_user('r07_stranger', '',
		[ 'read', tried('SELECT * FROM qes_sign.signatur_anfragen') ],
		[ 'timeline', tried("SELECT * FROM qes_sign.timeline('$new')") ]);
	check('listen_stranger', 'the stranger cannot read the requests', $t[0], '42501');
	check('listen_stranger', 'nor their timeline', $t[1], '42501');
}

# --- temp-table and operator hijack of the SECURITY DEFINER functions.
# The app owns schema r07_evil: a trigger function that makes it superuser
# when it runs as anyone else (and drops the row, so that the caller goes
# on and commits), and an "=" for uuid with the same payload.  Session A
# is the plain attack: a temp audit_log (and archive_objects) with that
# trigger, then the API.  Session B shadows every table the API touches,
# with rows that would serve the app, and puts r07_evil ahead of
# pg_catalog for the C function without a pinned search_path.
{
	my %cols = map { split /\|/, $_, 2 } split /\n/, one(q{
		SELECT c.relname || '|' || string_agg(format('%I %s', a.attname, format_type(a.atttypid, a.atttypmod)), ', ' ORDER BY a.attnum)
		  FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
		 WHERE c.relnamespace = 'qes_sign'::regnamespace AND c.relkind = 'r' GROUP BY c.relname});
	my @shadow = grep { $cols{$_} } qw(signatur_anfragen signers audit_log audit_head work_items callback_inbox
	  archive_objects archive_staging tenant_grants vorgangstypen audit_anchors);
	is(scalar(@shadow), 11, 'every table the API touches can be shadowed');
	my $real_key = one("SELECT key FROM qes_sign.archive_objects WHERE request_id = rt.uuid(14) AND kind = 'signed_pdf'");
	my $quality = one("SELECT min_quality FROM qes_sign.vorgangstypen WHERE vorgangstyp = 'mietvertrag'");
	my $cb = one("SELECT qes_sign.callback_url(rt.uuid(11), 'error')");
	as_user('r07_app', q{
	CREATE TABLE r07_evil.hits (tbl text, op text, who text);
	CREATE FUNCTION r07_evil.trap() RETURNS trigger LANGUAGE plpgsql AS $t$
	BEGIN
	    INSERT INTO r07_evil.hits VALUES (TG_TABLE_NAME, TG_OP, current_user);
	    BEGIN
	        EXECUTE 'ALTER ROLE r07_app SUPERUSER';
	    EXCEPTION WHEN OTHERS THEN NULL;
	    END;
	    RETURN NULL;   -- the row is dropped quietly: the caller goes on and commits
	END $t$;
	CREATE FUNCTION r07_evil.uuid_eq(a uuid, b uuid) RETURNS boolean LANGUAGE plpgsql SET search_path = pg_catalog AS $t$
	BEGIN
	    INSERT INTO r07_evil.hits VALUES ('operator =', 'call', current_user);
	    BEGIN
	        EXECUTE 'ALTER ROLE r07_app SUPERUSER';
	    EXCEPTION WHEN OTHERS THEN NULL;
	    END;
	    RETURN a::text = b::text;
	END $t$;
	CREATE OPERATOR r07_evil.= (LEFTARG = uuid, RIGHTARG = uuid, FUNCTION = r07_evil.uuid_eq);});
	my $temp = sub { "CREATE TEMP TABLE $_[0] ($cols{$_[0]});" };
	my $trap = sub { "CREATE TRIGGER trap BEFORE INSERT OR UPDATE OR DELETE ON pg_temp.$_[0] FOR EACH ROW EXECUTE FUNCTION r07_evil.trap();" };
	my $planted_archive = q{INSERT INTO pg_temp.archive_objects VALUES
	    (rt.uuid(13), 'signed_pdf', 'archive', 'evil/planted-13.pdf', sha256('x'), 1, 'application/pdf', now(), now()),
	    (rt.uuid(14), 'signed_pdf', 'archive', 'evil/planted-14.pdf', sha256('x'), 1, 'application/pdf', now(), now());};

	# session A: a temp audit_log and archive_objects, pg_temp searched first
	my @a = as_user('r07_app', join("\n", $app_setup, $temp->('audit_log'), $temp->('archive_objects'), $planted_archive,
			$trap->('audit_log'), $trap->('archive_objects'), 'SET search_path = pg_temp, qes_sign, public;'),
		[ 'control', tried("INSERT INTO audit_log (event) VALUES ('x')") ],
		[ 'create', "rt.msg(" . dq("SELECT qes_sign.create_request('hv-1', 'Hijack', rt.pdf(), $signers, id => rt.uuid(98))") . ")" ],
		[ 'download 13', tried("SELECT qes_sign.download(rt.uuid(13))") ],
		[ 'download 14', "rt.msg(" . dq("SELECT qes_sign.download(rt.uuid(14))") . ")" ],
		[ 'super', "(SELECT rolsuper FROM pg_roles WHERE rolname = 'r07_app')::text" ]);
	is($a[0], 'ok:0', "control: the trap on the app's own temp audit_log fires (the row is dropped)");
	check('temp_hijack', 'create_request with a temp audit_log that escalates', $a[1], 'ok', 'allowed');
	check('temp_hijack', 'the real audit_log has its created entry',
		one("SELECT count(*) FROM qes_sign.audit_log WHERE request_id = rt.uuid(98) AND event = 'created'"), '1');
	check('temp_hijack', 'the app role is not superuser afterwards', $a[4], 'false');
	check('temp_hijack', 'download of a vollstaendig request with a planted archive row: nothing archived (55000)', $a[2], '55000');
	check('temp_hijack', 'download of an archived request reads the recorded key, not the planted one',
		$a[3], qr/^58030: could not read archive object \Q$real_key\E$/);

	# session B: every table shadowed, rows planted, r07_evil ahead of pg_catalog
	my @b = as_user('r07_app', join("\n", $app_setup, (map { $temp->($_) } @shadow), $planted_archive, q{
	INSERT INTO pg_temp.signatur_anfragen (id, verwaltung, vorgangstyp, title, status, document)
	    VALUES (rt.uuid(21), 'hv-1', 'mietvertrag', 'fake', 'offen', rt.pdf());
	INSERT INTO pg_temp.signers (id, request_id, position, email, first_name, last_name, status)
	    VALUES (1, rt.uuid(21), 0, 'signer1@example.org', 'a', 'b', 'open');
	INSERT INTO pg_temp.tenant_grants VALUES ('r07_app', 'hv-2', 'me', now());
	INSERT INTO pg_temp.vorgangstypen VALUES ('mietvertrag', 'x', 'SES', 0, 'x');},
			(map { $trap->($_) } @shadow), 'SET search_path = r07_evil, pg_temp, pg_catalog, qes_sign, public;'),
		[ 'control: own =', "(rt.uuid(1) = rt.uuid(1))::text" ],
		[ 'create', "rt.msg(" . dq("SELECT qes_sign.create_request('hv-1', 'Hijack', rt.pdf(), $signers, id => rt.uuid(99))") . ")" ],
		[ 'remind planted', tried("SELECT qes_sign.remind(rt.uuid(21))") ],
		[ 'remind own', tried("SELECT qes_sign.remind(rt.uuid(11))") ],
		[ 'download 13', tried("SELECT qes_sign.download(rt.uuid(13))") ],
		[ 'callback', "(SELECT (r).duplicate FROM qes_sign.receive_callback('$cb') r)::text" ],
		[ 'my_tenants', "(SELECT string_agg(t, ',') FROM qes_sign.my_tenants() t)" ],
		[ 'select hv-2', "set_config('qes_sign.verwaltung', 'hv-2', false)" ],
		[ 'hv-2 read', counted("SELECT * FROM qes_sign.signatur_anfragen") ],
		[ 'hv-2 remind', tried("SELECT qes_sign.remind(rt.uuid(21))") ]);
	is($b[0], 'true', "control: the app's own uuid = is its operator");
	is(one("SELECT string_agg(DISTINCT tbl || ':' || who, ',' ORDER BY tbl || ':' || who) FROM r07_evil.hits WHERE who = 'r07_app'"),
		'audit_log:r07_app,operator =:r07_app', 'control: both traps recorded the app itself');
	check('temp_hijack', 'create_request with every table shadowed', $b[1], 'ok', 'allowed');
	check('temp_hijack', 'the real signatur_anfragen, signers, work_items and audit_log have it',
		one("SELECT (SELECT count(*) FROM qes_sign.signatur_anfragen WHERE id = rt.uuid(99)) || '/' || "
			  . "(SELECT count(*) FROM qes_sign.signers WHERE request_id = rt.uuid(99)) || '/' || "
			  . "(SELECT count(*) FROM qes_sign.work_items WHERE request_id = rt.uuid(99) AND kind = 'submit') || '/' || "
			  . "(SELECT count(*) FROM qes_sign.audit_log WHERE request_id = rt.uuid(99) AND event = 'created')"), '1/1/1/1');
	check('temp_hijack', "create_request read the real vorgangstypen (quality $quality)",
		one("SELECT quality FROM qes_sign.signatur_anfragen WHERE id = rt.uuid(99)"), $quality);
	check('temp_hijack', "remind of hv-2's request planted in a temp signatur_anfragen as hv-1's", $b[2], 'P0002');
	check('temp_hijack', 'remind of its own request (the real signers, not the empty temp table)', $b[3], 'ok:1', 'allowed');
	check('temp_hijack', 'download with a planted archive row, every table shadowed (55000)', $b[4], '55000');
	check('temp_hijack', "receive_callback (C, the caller's search_path) stores in the real inbox", $b[5], 'false');
	check('temp_hijack', 'the real inbox has it',
		one("SELECT count(*) FROM qes_sign.callback_inbox WHERE request_id = rt.uuid(11) AND callback_type = 'error'"), '1');
	check('temp_hijack', 'my_tenants() reads the real grants', $b[6], 'hv-1', 'allowed');
	is($b[7], 'hv-2', 'the app selects hv-2, which its temp tenant_grants lists');
	check('temp_hijack', 'a temp tenant_grants does not grant hv-2: no rows', $b[8], 'rows:0');
	check('temp_hijack', 'nor remind of a hv-2 request', $b[9], '42501');
	check('temp_hijack', 'no trap ran as anyone but the app',
		one("SELECT coalesce(string_agg(tbl || ' ' || op || ' as ' || who, ', '), 'none') FROM r07_evil.hits WHERE who <> 'r07_app'"), 'none');
	check('temp_hijack', 'the app role is not superuser', one("SELECT rolsuper FROM pg_roles WHERE rolname = 'r07_app'"), 'f');
	one('ALTER ROLE r07_app NOSUPERUSER');    # whatever happened
}

is($node->safe_psql('postgres', 'SELECT ok FROM qes_sign.verify_audit_chain()'), 't', 'audit chain ok');
my $log = PostgreSQL::Test::Utils::slurp_file($node->logfile);
unlike($log, qr/terminated by signal|PANIC/, 'server never crashed');
$node->stop;

note(sprintf('COUNTS r07_privileges: attempts=%d refused_42501_55P02=%d read_as_missing=%d allowed=%d contained=%d wrong=%d '
		  . 'functions_checked=%d %s',
		scalar(@attempts), $refused, $missing, $allowed, $contained, $bad, scalar(@funcs),
		join(' ', map { "$_=" . ($per_path{$_} // 0) } qw(tenant_switch restarted_from_probe callback_flood listen_stranger temp_hijack))));
done_testing();
