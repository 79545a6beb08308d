# The update from 1.0 to 1.1 (ALTER EXTENSION qes_sign UPDATE) of a
# database that the 1.0 worker filled, the way an operator does it: 1.0
# (its shared library built from commit c49c3df, in a copy of this
# PostgreSQL installation) runs against the Skribble double and the S3
# server and leaves requests in every status, audit entries, archive rows,
# queued work and callbacks; the package with 1.1 replaces the library;
# after the restart, ALTER EXTENSION UPDATE.  Checked: nothing is lost or
# changed (counts, every request and its ids, signers, the audit chain,
# archive rows, queued work, the inbox), the chain verifies, the WARNING
# names the tenants, the worker finishes the open requests and new ones,
# and the schema equals a fresh CREATE EXTENSION of 1.1 (pg_dump).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::RealBin/../perl";
use QesTest;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP qw(decode_json);
use File::Basename qw(dirname);
use File::Compare qw(compare);
use File::Copy qw(copy);
use File::Path qw(rmtree make_path);
use Time::HiRes qw(time);
use Cwd qw(abs_path);

my $started = time;
my $repo    = abs_path("$FindBin::RealBin/../..");
my $release = 'c49c3df';    # qes_sign 1.0 as released
my $tmp     = $PostgreSQL::Test::Utils::tmp_check;

# ---- qes_sign 1.0 in a copy of this PostgreSQL installation
#
# The 1.1 library's worker calls _claim(int, text[]) and reads a tenth
# column of api_call: it cannot drive a 1.0 schema (it waits for the update).  So 1.0 runs with its
# own library, like a server that has not installed the new package yet:
# postgres, copied with its bin directory, finds its lib and share
# directories relative to itself; lib holds links to this installation's
# modules but qes_sign.so from 1.0, share links to this installation's
# files but copies of qes_sign's (its qes_sign--1.0.sql is the released
# one, checked below).  1.1 is what `make install` installed, copied when
# the test starts: both the update and the fresh install below run the
# same scripts even if qes_sign is installed again meanwhile.

sub pg_config { my ($what) = @_; my $v = `pg_config --$what`; chomp $v; die "pg_config --$what" if $?; return $v; }

my ($bindir, $pkglibdir, $sharedir) = map { pg_config($_) } qw(bindir pkglibdir sharedir);
my $root = "$tmp/pg_qes_sign_1.0";
my $inst = dirname("$root$bindir");    # bin and lib below it, for PostgreSQL::Test::Cluster

sub build_release
{
	my $src = "$tmp/qes_sign_${release}_src";
	rmtree($src);
	make_path($src);
	my $err = '';
	IPC::Run::run([ 'git', '-c', "safe.directory=$repo", '-C', $repo, 'archive', $release,
			'Makefile', 'src', 'qes_sign.control', 'sql/qes_sign--1.0.sql' ],
		'|', [ 'tar', '-x', '-C', $src ], '2>', \$err)
	  or return "git archive $release failed: $err";
	run_log([ 'make', '-C', $src, '-s', '-j4', 'with_llvm=no' ])
	  or BAIL_OUT("building qes_sign $release failed (see the log)");
	return (undef, $src);
}

# without the repository's history there is no 1.0 to update from
my ($skip, $src) = build_release();
plan skip_all => $skip if $skip;

rmtree($root);
make_path("$root$bindir", "$root$pkglibdir", "$root$sharedir/extension");
for my $f (glob("$bindir/*"))
{
	copy($f, "$root$f") or die "copy $f: $!";
	chmod 0755, "$root$f";
}
for my $f (glob("$pkglibdir/*"))
{
	next if $f =~ m{/(qes_sign\.so|qes_sign\.index\.bc|bitcode)$};
	symlink($f, "$root$f") or die "symlink $f: $!";
}
copy("$src/qes_sign.so", "$root$pkglibdir/qes_sign.so") or die "copy qes_sign.so: $!";
copy("$pkglibdir/qes_sign.so", "$tmp/qes_sign_1.1.so") or die "copy qes_sign.so: $!";
for my $f (glob("$sharedir/*"), glob("$sharedir/extension/*"))
{
	next if $f eq "$sharedir/extension";
	if ($f =~ m{/extension/qes_sign[^/]*$}) { copy($f, "$root$f") or die "copy $f: $!"; }
	else { symlink($f, "$root$f") or die "symlink $f: $!"; }
}
is(compare("$src/sql/qes_sign--1.0.sql", "$root$sharedir/extension/qes_sign--1.0.sql"), 0,
	"the installed qes_sign--1.0.sql is ${release}'s");

# 1.0 predates the double's strict readings of Skribble's documentation
# (the login's Accept, no form Content-Type on a body-less POST): off while
# 1.0 runs, on again for 1.1
my $d    = start_double('strict-accept' => 'off', 'strict-content-type' => 'off');
my $s3   = start_s3();
my $node = qes_node('upgrade', double => $d, s3 => $s3, version => '1.0', install_path => $inst,
	conf => { 'qes_sign.retry_max_delay' => "'1s'" });

sub one { my ($sql, $db) = @_; return $node->safe_psql($db // 'postgres', $sql); }
# as the portal's role, with the tenant it selected
sub as_portal
{
	my ($tenant, $sql) = @_;
	return one("SET ROLE portal; SET qes_sign.verwaltung = '$tenant'; $sql");
}
sub req_of { my ($id, $col) = @_; return one("SELECT $col FROM qes_sign.signatur_anfragen WHERE id = '$id'"); }
sub status_of { return req_of($_[0], 'status'); }
sub count_of { my ($sql) = @_; return one("SELECT count(*) FROM ($sql) x"); }

# the 1.0 column names (QesTest's helpers read provider_id)
sub submitted_10
{
	my (@ids) = @_;
	ok(wait_until($node, 'SELECT count(*) FROM qes_sign.signatur_anfragen WHERE skribble_id IS NOT NULL '
			  . 'AND id IN (' . in_list(@ids) . ')', scalar(@ids)),
		scalar(@ids) . ' requests submitted to Skribble (1.0)')
	  or die "not submitted under 1.0\n";
}
# every current signer who has not signed signs at the double
sub sign_10
{
	my (@ids) = @_;
	my $refused = 0;
	for my $row (query_list($node, "SELECT a.skribble_id, s.email FROM qes_sign.signatur_anfragen a "
			. "JOIN qes_sign.signers s ON s.request_id = a.id AND s.status NOT IN ('replaced', 'signed') "
			. 'WHERE a.id IN (' . in_list(@ids) . ') ORDER BY a.id, s.sequence NULLS FIRST, s.position'))
	{
		next if signer_action($d, $row->[0], $row->[1], 'sign') == 200;
		diag("$row->[1] could not sign $row->[0]");
		$refused++;
	}
	return $refused;
}

# The state that must come through the update, as one JSON document, read
# with the column names of the version installed
sub snapshot_sql
{
	my ($v) = @_;
	my ($pid, $prov, $sid) = $v eq '1.0'
	  ? ('skribble_id', "'skribble'", 'sid')
	  : ('provider_id', 'provider', 'provider_signer_id');
	return qq{SELECT jsonb_build_object(
  'counts', (SELECT jsonb_object_agg(c.relname, (xpath('/row/n/text()', query_to_xml(
                 format('SELECT count(*) AS n FROM qes_sign.%I', c.relname), false, true, '')))[1]::text::bigint)
               FROM pg_class c WHERE c.relnamespace = 'qes_sign'::regnamespace AND c.relkind = 'r'),
  'requests', (SELECT jsonb_agg(jsonb_build_array(id, verwaltung, status, $pid, $prov, document_id,
                                                   created_by, sent_at, completed_at, archived_at, cancel_reason,
                                                   retention_until, encode(document_sha256, 'hex')) ORDER BY id)
                 FROM qes_sign.signatur_anfragen),
  'signers', (SELECT jsonb_agg(jsonb_build_array(id, request_id, email, status, $sid, replaced_by, signed_at)
                               ORDER BY id) FROM qes_sign.signers),
  'audit', (SELECT jsonb_agg(jsonb_build_array(seq, encode(hash, 'hex')) ORDER BY seq) FROM qes_sign.audit_log),
  'head', (SELECT jsonb_build_array(seq, encode(hash, 'hex')) FROM qes_sign.audit_head),
  'archive', (SELECT jsonb_agg(jsonb_build_array(request_id, kind, bucket, key, encode(sha256, 'hex'), size,
                                                  verified_at IS NOT NULL) ORDER BY request_id, kind)
                FROM qes_sign.archive_objects),
  'staging', (SELECT jsonb_agg(jsonb_build_array(request_id, kind, key, encode(sha256, 'hex'), size,
                                                  encode(sha256(content), 'hex')) ORDER BY request_id, kind)
                FROM qes_sign.archive_staging),
  'work', (SELECT jsonb_agg(jsonb_build_array(id, request_id, kind, state, payload) ORDER BY id)
             FROM qes_sign.work_items),
  'inbox', (SELECT jsonb_agg(jsonb_build_array(id, request_id, callback_type, dedupe_key, processed_at IS NULL)
                             ORDER BY id) FROM qes_sign.callback_inbox))};
}

my %id;          # role in the test => request id
my $end_10;      # snapshot when 1.0 stops
my $before;      # snapshot of 1.0, right before the update
my $at_update;   # snapshot inside the update's transaction
my $update_ms = 0;
my $window_error = '';   # what the 1.1 worker logs on the 1.0 schema
my @after_ids;   # requests the 1.1 worker completed

# ---- 1.0: requests in every status, through the 1.0 worker

scenario '1.0: requests in every status through the worker and the double' => sub {
	is(one("SELECT extversion FROM pg_extension WHERE extname = 'qes_sign'"), '1.0', 'qes_sign 1.0 installed');
	ok(wait_until($node, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'qes_sign worker'", '1', 30),
		'the 1.0 worker runs');
	one(q{CREATE ROLE portal LOGIN IN ROLE qes_sign_app});

	@id{qw(A B C D E F)} = create_requests($node, 6);
	my $pdf = unpack('H*', test_pdf());
	($id{N}) = as_portal('hv-nord', qq{SELECT qes_sign.create_request('hv-nord', 'Stellplatz Nord 7',
		'\\x$pdf'::bytea, '[{"first_name": "Nora", "last_name": "Nord", "email": "nora\@example.org"},
		                    {"first_name": "Nils", "last_name": "Nord", "email": "nils\@example.org"}]')});
	submitted_10(@id{qw(A B C D E F N)});

	is(sign_10($id{A}), 0, 'A: every signer signs');
	is(signer_action($d, req_of($id{C}, 'skribble_id'), 'signer1@example.org', 'sign'), 200, 'C: signer 1 signs');
	one(qq{SELECT qes_sign.replace_signer('$id{D}', 'signer2\@example.org',
		'{"first_name": "Berta", "last_name": "Neu", "email": "berta.neu\@example.org"}')});
	one("SELECT qes_sign.withdraw('$id{E}', 'Wohnung anderweitig vermietet')");
	is(signer_action($d, req_of($id{F}, 'skribble_id'), 'signer2@example.org', 'decline',
			{ message => 'Falsche Miethöhe' }), 200, 'F: signer 2 declines');

	all_status_ok($node, [ $id{A} ], 'archiviert', 60, 'A: archiviert (four objects in the bucket)');
	ok(wait_until($node, "SELECT status || '/' || (SELECT string_agg(status::text, ',' ORDER BY position) "
			  . "FROM qes_sign.signers WHERE request_id = a.id) FROM qes_sign.signatur_anfragen a WHERE id = '$id{C}'",
			'in_signatur/signed,open'), 'C: in_signatur, signer 1 signed');
	ok(wait_until($node, "SELECT state FROM qes_sign.work_items WHERE request_id = '$id{D}' AND kind = 'replace_signer'",
			'done'), 'D: signer 2 replaced at Skribble');
	all_status_ok($node, [ @id{qw(E F)} ], 'abgebrochen', 60, 'E (withdrawn) and F (declined): abgebrochen');
	is(count_of("SELECT FROM qes_sign.archive_objects WHERE request_id = '$id{A}'"), 4, 'A: four archive rows');

	# 1.0 knows no tenant grants: any role selects any tenant
	is(as_portal('hv-test', 'SELECT count(*) FROM qes_sign.signatur_anfragen'), 6,
		'1.0: the portal role reads tenant hv-test by setting qes_sign.verwaltung');

	# B: all signed while the bucket is down: vollstaendig, staged, the PUT retried
	stop_s3($s3);
	is(sign_10($id{B}), 0, 'B: every signer signs (bucket down)');
	all_status_ok($node, [ $id{B} ], 'vollstaendig', 60, 'B: vollstaendig');
	ok(wait_until($node, "SELECT (SELECT count(*) FROM qes_sign.archive_staging WHERE request_id = '$id{B}') || '/' "
			  . "|| (SELECT failures > 0 FROM qes_sign.work_items WHERE request_id = '$id{B}' AND kind = 'archive' "
			  . "AND state = 'pending')", '4/true'),
		'B: three objects fetched from Skribble and record.json staged, the upload failing');

	# queued work: a create and a reminder that Skribble answers 503
	ctl_post($d, 'faults', { error_rate => 1, error_status => 503,
			paths => '^POST /v2/signature-requests(/[^/]+/remind)?$' });
	($id{G}) = create_requests($node, 1);
	one("SELECT qes_sign.remind('$id{D}')");
	ok(wait_until($node, "SELECT bool_and(failures > 0 AND state = 'pending') FROM qes_sign.work_items "
			  . "WHERE (request_id, kind) IN (('$id{G}', 'submit'), ('$id{D}', 'remind'))"),
		'G: its create and D: its reminder queued, failing with 503');

	# C: signer 2 signs at Skribble while its callbacks are held back
	ctl_post($d, 'pause-callbacks');
	is(signer_action($d, req_of($id{C}, 'skribble_id'), 'signer2@example.org', 'sign'), 200,
		'C: signer 2 signs at the double (its callbacks held back)');
	cmp_ok(count_of('SELECT FROM qes_sign.callback_inbox'), '>', 0, 'callbacks in the inbox');
	$end_10 = decode_json(one(snapshot_sql('1.0')));
};

# ---- the package with 1.1 is installed: the new library, a restart

my $log_offset;
scenario 'the 1.1 library on the 1.0 schema, until the update' => sub {
	$node->stop;
	ctl_post($d, 'options', { strict_accept => 'on', strict_content_type => 'on' });
	unlink("$root$pkglibdir/qes_sign.so");
	copy("$tmp/qes_sign_1.1.so", "$root$pkglibdir/qes_sign.so") or die "copy: $!";
	$log_offset = -s $node->logfile;
	$node->start;
	is(one("SELECT extversion FROM pg_extension WHERE extname = 'qes_sign'"), '1.0', 'still 1.0 after the restart');
	# the new worker on the old schema waits for the update, and says so
	my ($said, $log_deadline) = (undef, time + 10);
	while (!$said && time < $log_deadline)
	{
		($said) = slurp_file($node->logfile, $log_offset) =~ /(qes_sign worker waits: [^\n]*)/;
		Time::HiRes::usleep(200_000) unless $said;
	}
	like($said // '', qr/the extension is version 1\.0, this library needs 1\.1/,
		'the 1.1 worker waits for ALTER EXTENSION UPDATE and says so');
	my ($err) = slurp_file($node->logfile, $log_offset) =~ /(ERROR:[^\n]*_claim[^\n]*)/;
	ok(!$err, 'no error from the 1.1 worker on the 1.0 schema') or diag($err);
	$window_error = $err // 'none (the worker waits)';
	# callbacks that arrive now are kept for after the update
	ctl_post($d, 'resume-callbacks');
	my $deadline = time + 30;
	Time::HiRes::usleep(100_000) while double_stats($d)->{callbacks}{pending} > 0 && time < $deadline;
	is(double_stats($d)->{callbacks}{pending}, 0, 'the double delivered its held-back callbacks');
	ok(wait_until($node, "SELECT count(*) > 0 FROM qes_sign.callback_inbox WHERE request_id = '$id{C}' "
			  . 'AND processed_at IS NULL'),
		"C: its held-back callbacks are stored (the 1.1 library's receive_callback, 1.0 schema)");
	is(status_of($id{C}), 'in_signatur', 'C: nothing applied them yet');

	$before = decode_json(one(snapshot_sql('1.0')));
	for my $k (qw(requests signers audit head archive staging))
	{
		is_deeply($before->{$k}, $end_10 && $end_10->{$k}, "$k: as 1.0 left them (the new library changed nothing)");
	}
	ok((grep { defined $_->[3] } @{ $before->{requests} }) >= 6, 'before the update: Skribble ids to carry over');
	ok((grep { defined $_->[4] } @{ $before->{signers} }) >= 12, "before the update: signers' sids to carry over");
	my %seen = map { $_->[2] => 1 } @{ $before->{requests} };
	is(join(',', sort keys %seen), 'abgebrochen,archiviert,in_signatur,offen,vollstaendig',
		'before the update: requests in every status');
	ok(scalar(grep { $_->[4] } @{ $before->{inbox} }), 'before the update: unprocessed callbacks in the inbox');
	ok(scalar(grep { $_->[3] eq 'pending' } @{ $before->{work} }), 'before the update: pending work items');
	ok(scalar(@{ $before->{staging} // [] }), 'before the update: staged archive objects');
};

# ---- ALTER EXTENSION qes_sign UPDATE, and the data in its transaction

scenario 'ALTER EXTENSION qes_sign UPDATE: nothing lost, nothing changed' => sub {
	die "no snapshot of 1.0\n" unless $before;
	my ($out, $err) = ('', '');
	my $t0 = time;
	my $rc = $node->psql('postgres', "BEGIN; ALTER EXTENSION qes_sign UPDATE;
		SELECT extversion FROM pg_extension WHERE extname = 'qes_sign';
		" . snapshot_sql('1.1') . "; COMMIT;", stdout => \$out, stderr => \$err);
	$update_ms = 1000 * (time - $t0);
	is($rc, 0, 'ALTER EXTENSION qes_sign UPDATE succeeds') or diag($err);
	my ($version, $json) = split /\n/, $out, 2;
	is($version, '1.1', 'extversion 1.1');
	like($err, qr/WARNING:  qes_sign 1\.1 binds tenants to roles; grant each portal role its tenants: hv-nord, hv-test/,
		'the update warns with the tenants that have requests');
	like($err, qr/HINT:  SELECT qes_sign\.grant_tenant/, '... and hints at grant_tenant');
	is(scalar(() = $err =~ /WARNING/g), 1, 'no other warning');
	$at_update = decode_json($json);

	my ($b, $a) = ($before, $at_update);
	for my $t (sort keys %{ $b->{counts} })
	{
		is($a->{counts}{$t}, $b->{counts}{$t}, "$t: $b->{counts}{$t} rows before and after");
	}
	is_deeply([ sort grep { !exists $b->{counts}{$_} } keys %{ $a->{counts} } ],
		[qw(audit_anchors provider_pauses tenant_grants webhook_ids)], 'the new tables of 1.1');
	is((grep { $a->{counts}{$_} } qw(audit_anchors provider_pauses tenant_grants webhook_ids)), 0, '... empty');
	is_deeply($a->{requests}, $b->{requests},
		'every request: status, provider_id = skribble_id, provider skribble, document_id, times, digest');
	is_deeply($a->{signers}, $b->{signers}, 'every signer: status, provider_signer_id = sid, replaced_by');
	is_deeply($a->{audit}, $b->{audit}, scalar(@{ $b->{audit} }) . ' audit entries: seq and hash unchanged');
	is_deeply($a->{head}, $b->{head}, 'the chain head unchanged');
	is_deeply($a->{archive}, $b->{archive}, 'archive_objects unchanged');
	is_deeply($a->{staging}, $b->{staging}, 'archive_staging unchanged (B, content and digest)');
	is_deeply($a->{work}, $b->{work}, 'work items unchanged (kinds, states, payloads)');
	is_deeply($a->{inbox}, $b->{inbox}, 'callback inbox unchanged (the unprocessed ones still unprocessed)');
};

scenario 'after the update: the chain, the tenants, the worker' => sub {
	die "not updated\n" unless $at_update;
	restart_s3($s3);
	# (the worker resumes within a second of the update: entries may follow)
	my $n = scalar(@{ $before->{audit} });
	my $v = one("SELECT ok, entries >= $n, coalesce(problem, '') FROM qes_sign.verify_audit_chain()");
	is($v, 't|t|', "verify_audit_chain: ok over every entry of 1.0 ($n) and what followed");

	# tenants: nothing for the portal until it is granted
	is(as_portal('hv-nord', 'SELECT count(*) FROM qes_sign.signatur_anfragen'), 0,
		'1.1: the portal role reads nothing before its grant');
	one(q{SELECT qes_sign.grant_tenant('portal', 'hv-nord')});
	is(as_portal('hv-nord', 'SELECT count(*) FROM qes_sign.signatur_anfragen'), 1, 'granted hv-nord: its request');
	is(as_portal('hv-test', 'SELECT count(*) FROM qes_sign.signatur_anfragen'), 0,
		'hv-test, not granted: nothing (1.0 showed it)');

	# the queued work goes on: the create, the reminder, the held callbacks, the upload
	ctl_post($d, 'faults', {});
	submitted_ok($node, [ $id{G} ], 60, 'G: created at Skribble by the 1.1 worker');
	ok(wait_until($node, "SELECT state FROM qes_sign.work_items WHERE request_id = '$id{D}' AND kind = 'remind'", 'done'),
		"D: the queued reminder sent");
	ok((grep { $_ eq 'reminded' } @{ events($node, $id{D}) }), 'D: audit: reminded');
	all_status_ok($node, [ $id{C} ], 'archiviert', 60, 'C: the held-back callbacks applied: archiviert');
	all_status_ok($node, [ $id{B} ], 'archiviert', 60, 'B: staged under 1.0, uploaded by 1.1: archiviert');

	# the open ones are signed, and two new requests go through
	my ($h) = as_portal('hv-nord', qq{SELECT qes_sign.create_request('hv-nord', 'Stellplatz Nord 8',
		'\\x} . unpack('H*', test_pdf()) . q{'::bytea,
		'[{"first_name": "Nora", "last_name": "Nord", "email": "nora@example.org"}]')});
	my ($h2) = create_requests($node, 1);
	submitted_ok($node, [ $h, $h2 ], 60, 'two requests created after the update submitted');
	is(req_of($h, 'provider'), 'skribble', 'a new request: provider skribble');
	is(sign_all($d, $node, [ @id{qw(D G N)}, $h, $h2 ]), 0, 'D, G, N and the new ones: every signer signs');
	@after_ids = (@id{qw(B C D G N)}, $h, $h2);
	all_status_ok($node, \@after_ids, 'archiviert', 60, scalar(@after_ids) . ' requests archiviert after the update');
	is(count_of('SELECT FROM qes_sign.archive_objects WHERE request_id IN (' . in_list(@after_ids) . ')'),
		4 * @after_ids, 'four archive rows each');
	is(as_portal('hv-nord', 'SELECT string_agg(status::text, \',\') FROM qes_sign.signatur_anfragen'),
		'archiviert,archiviert', 'the portal sees its two requests archiviert');

	# what 1.0 archived reads back through 1.1
	my $bytes = one("SELECT encode(sha256(qes_sign.download('$id{A}')), 'hex')");
	my ($sum) = grep { $_->[0] eq $id{A} && $_->[1] eq 'signed_pdf' } @{ $before->{archive} };
	is($bytes, $sum->[4], "A: download of the signed PDF archived under 1.0 verifies");

	ok(wait_until($node, 'SELECT count(*) > 0 FROM qes_sign.audit_anchors'), 'the chain is anchored in the bucket');
	$v = one(q{SELECT ok || '|' || coalesce(problem, '') || '|' || anchor_check FROM qes_sign.verify_audit_chain()});
	like($v, qr/^true\|\|checked against \d+ anchor/, 'verify_audit_chain: ok, with the anchors') or diag($v);
};

# ---- the schema: updated from 1.0 = a fresh CREATE EXTENSION of 1.1
#
# A plain pg_dump leaves out every member of an extension (CREATE EXTENSION
# stands for them), and with --schema qes_sign even that: it would compare
# nothing.  --binary-upgrade (what pg_upgrade uses) dumps each member with
# ALTER EXTENSION ... ADD, and the state pg_upgrade must carry over.
# Normalised is only what differs between two databases of one cluster
# whatever their schema, and data: the OIDs and relfilenodes pg_upgrade
# keeps (and the OIDs of the configuration tables, compared by name
# below), each table's relfrozenxid/relminmxid, the WAL positions of
# binary_upgrade_set_next_attribute_versions (kept as their order: columns
# added by the update are later on both paths), the sequences' values
# (data: setval), and the random \restrict key of the dump.

my %normalised;
my $dump_lines = 0;

sub dump_schema
{
	my ($db) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ $node->installed_command('pg_dump'), '--schema-only', '--binary-upgrade', '--no-sync',
			'-d', $node->connstr($db) ], '>', \$out, '2>', \$err)
	  or die "pg_dump $db: $err";
	PostgreSQL::Test::Utils::append_to_file("$tmp/upgrade_dump_$db.sql", $out);
	my %n;
	$n{oids} += $out =~ s/(binary_upgrade_set_next_\w+)\('\d+'::pg_catalog\.oid\)/$1('<oid>'::pg_catalog.oid)/g;
	$n{oids} += $out =~ s/^WHERE oid = '\d+';$/WHERE oid = '<oid>';/mg;
	$n{oids} += $out =~ s/(binary_upgrade_create_empty_extension\([^\n]*?)'\{[\d,]+\}'/$1'{<config oids>}'/g;
	$n{xids} += $out =~ s/(SET relfrozenxid = ')\d+(', relminmxid = ')\d+'/$1<xid>$2<mxid>'/g;
	$n{lsns} += $out =~ s{(binary_upgrade_set_next_attribute_versions\(')\{([0-9A-F/,]+)\}'}{
		my %rank;
		my $i = 0;
		$1 . '{' . join(',', map { '<lsn' . ($rank{$_} //= ++$i) . '>' } split /,/, $2) . "}'"
	}ge;
	$n{setval} += $out =~ s/(pg_catalog\.setval\('[^']+'), \d+, (true|false)\)/$1, <value>)/g;
	$n{restrict} += $out =~ s/^\\(un)?restrict \S+$/\\$1restrict <key>/mg;
	$normalised{$db} = \%n;
	PostgreSQL::Test::Utils::append_to_file("$tmp/upgrade_dump_${db}_normalised.sql", $out);
	return $out;
}

scenario 'the updated schema equals a fresh install of 1.1 (pg_dump --schema-only)' => sub {
	unlink glob("$tmp/upgrade_dump_*.sql");
	one('CREATE DATABASE qes_fresh');
	my $err = '';
	$node->psql('qes_fresh', 'CREATE EXTENSION qes_sign CASCADE', stderr => \$err);
	is($err, '', 'fresh CREATE EXTENSION: no warning (no tenants to grant)');
	is(one("SELECT extversion FROM pg_extension WHERE extname = 'qes_sign'", 'qes_fresh'), '1.1', 'fresh: 1.1');
	my $upd = dump_schema('postgres');
	my $new = dump_schema('qes_fresh');
	$dump_lines = () = $upd =~ /\n/g;
	cmp_ok($dump_lines, '>', 1000, "the dump has the extension's members ($dump_lines lines)");
	like($upd, qr/ALTER EXTENSION qes_sign ADD TABLE qes_sign\.signatur_anfragen/, '... with ALTER EXTENSION ADD');
	like($upd, qr/CREATE FUNCTION qes_sign\._claim\(n integer, ready text\[\]/, '... and the bodies of 1.1');
	is_deeply($normalised{postgres}, $normalised{qes_fresh}, 'the same normalisations in both: '
		  . join(', ', map { "$_ $normalised{postgres}{$_}" } sort keys %{ $normalised{postgres} }));
	my $same = $upd eq $new;
	ok($same, 'pg_dump --schema-only --binary-upgrade: updated from 1.0 = fresh 1.1');
	if (!$same)
	{
		my ($diff) = ('');
		IPC::Run::run([ 'diff', '-u', "$tmp/upgrade_dump_qes_fresh_normalised.sql",
				"$tmp/upgrade_dump_postgres_normalised.sql" ], '>', \$diff);
		diag("--- fresh 1.1, +++ updated from 1.0:\n" . substr($diff, 0, 20000));
	}
	my $cfg = q{SELECT extversion, extconfig::regclass[]::text, extcondition::text FROM pg_extension
	             WHERE extname = 'qes_sign'};
	is(one($cfg), one($cfg, 'qes_fresh'), 'the same configuration tables and conditions (pg_dump dumps their data)');
	my $types = 'SELECT * FROM qes_sign.vorgangstypen ORDER BY 1';
	is(one($types), one($types, 'qes_fresh'), 'the same request types (reference data of 1.0, signature_field of 1.1)');
};

# ---- summary

{
	my $end = eval { decode_json(one(snapshot_sql('1.1'))) } // {};
	my $chain = eval { one('SELECT ok FROM qes_sign.verify_audit_chain()') } // '?';
	my @tables = sort keys %{ $before->{counts} // {} };
	diag(sprintf('upgrade 1.0 -> 1.1: rows per table before/at update/end: %s; new tables at the end: %s',
			join(', ', map { "$_ $before->{counts}{$_}/" . ($at_update->{counts}{$_} // '?') . '/'
				  . ($end->{counts}{$_} // '?') } @tables),
			join(', ', map { "$_ " . ($end->{counts}{$_} // '?') }
				  grep { !exists $before->{counts}{$_} } sort keys %{ $end->{counts} // {} })));
	diag(sprintf('audit entries: %d before the update, %d (same seq and hash) in its transaction, %d at the end; chain ok: %s; '
			  . 'requests completed (archiviert) after the update: %d of %d; update took %.0f ms; '
			  . 'schema dump: %d lines, normalised %s; run %.0f s',
			scalar(@{ $before->{audit} // [] }), scalar(@{ $at_update->{audit} // [] }),
			scalar(@{ $end->{audit} // [] }), $chain,
			(@after_ids ? count_of("SELECT FROM qes_sign.signatur_anfragen WHERE status = 'archiviert' AND id IN ("
					  . in_list(@after_ids) . ')') : 0), scalar(@after_ids),
			$update_ms, $dump_lines,
			join(' ', map { "$_=$normalised{postgres}{$_}" } sort keys %{ $normalised{postgres} // {} }),
			time - $started));
	diag("until the update, errors of the 1.1 worker: $window_error");
}

done_testing();
