# r05_backup_restore.pl: suite 5 of "Proven reliability".  A database with
# requests in every status, driven the real way (the worker against the
# Skribble double, callbacks through the relay, the archive on the S3
# server): offen (submitted, nobody acted), in_signatur (a signer viewed),
# vollstaendig (all signed, the archive refused by S3 503s), archiviert,
# abgebrochen (a signer declined).  The worker of the source is then
# stopped, the database dumped with pg_dump -Fc and restored into a new
# cluster twice: A, in restore mode (PGOPTIONS='-c qes_sign.restore=on'
# pg_restore --single-transaction): every qes_sign table has the same rows
# (counts, and contents), the sequences, verify_audit_chain() ok, every
# status group intact, the triggers still ENABLE ALWAYS; B, a plain
# pg_restore with restore mode forgotten: it fails loudly, names restore
# mode, and takes no audit entry in under a new number.  Then the worker
# of the restored cluster, pointed at A with the same double, resumes: the
# open requests, signed at the double now, complete and are archived, and
# the vollstaendig ones, whose archiving was pending, are archived; no
# request is created twice at Skribble -- also not the one the source sent
# only after the dump: on another cluster the worker looks up every create
# not yet answered by custom first.
# Scale: QES_SCALE=full 20 requests per status, otherwise 2.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::RealBin/../perl", $FindBin::RealBin;
use QesTest;
use Reliability;
use Time::HiRes qw(time);
use PostgreSQL::Test::Utils;
use Test::More;

my $t0 = time;
my $per = scaled(20, 2);
my @statuses = qw(offen in_signatur vollstaendig archiviert abgebrochen);

my $d   = start_double();
my $s3  = start_s3();
my $src = qes_node('r05src', double => $d, s3 => $s3, conf => { 'qes_sign.retry_max_delay' => "'1s'" });
my (%ids, @all);

sub status_count
{
	my ($node, $db, $ids, $status) = @_;
	return $node->safe_psql($db, "SELECT count(*) FROM qes_sign.signatur_anfragen WHERE status = '$status' AND id IN ("
		  . in_list(@$ids) . ')');
}
sub wait_db
{
	my ($node, $db, $sql, $want, $timeout) = @_;
	my $deadline = time + ($timeout // 90);
	my $got = '';
	while (time < $deadline)
	{
		$got = $node->safe_psql($db, $sql);
		return 1 if $got eq $want;
		select(undef, undef, undef, 0.25);
	}
	diag("timed out: $sql: want $want, got $got");
	return 0;
}
# sign_at_double(node, db, ids, view|sign|decline, only_email): the signers act at the double;
# returns the number of refused actions
sub sign_at_double
{
	my ($node, $db, $ids, $action, $only) = @_;
	my $bad = 0;
	for my $row (split /\n/, $node->safe_psql($db, qq{
		SELECT a.provider_id || '|' || s.email FROM qes_sign.signatur_anfragen a
		  JOIN qes_sign.signers s ON s.request_id = a.id AND s.status <> 'replaced'
		 WHERE a.id IN (} . in_list(@$ids) . ') ' . ($only ? "AND s.email = '$only'" : '') . ' ORDER BY a.id, s.position'))
	{
		my ($sr, $email) = split /\|/, $row;
		$bad++ unless signer_action($d, $sr, $email, $action) == 200;
	}
	return $bad;
}

# ---- the source: one group of requests per status
@all = create_requests($src, 5 * $per);
for my $i (0 .. $#statuses) { $ids{ $statuses[$i] } = [ @all[ $i * $per .. ($i + 1) * $per - 1 ] ]; }
submitted_ok($src, \@all, 60);
is(sign_at_double($src, 'postgres', $ids{in_signatur}, 'view', 'signer1@example.org'), 0, 'in_signatur group: signer 1 views');
is(sign_at_double($src, 'postgres', $ids{abgebrochen}, 'decline', 'signer2@example.org'), 0, 'abgebrochen group: signer 2 declines');
is(sign_at_double($src, 'postgres', $ids{archiviert}, 'sign'), 0, 'archiviert group: all sign');
for my $s (qw(in_signatur abgebrochen archiviert))
{
	ok(wait_db($src, 'postgres', "SELECT count(*) FROM qes_sign.signatur_anfragen WHERE status = '$s' AND id IN ("
		  . in_list(@{ $ids{$s} }) . ')', $per), "source: $per requests $s");
}
# S3 refuses every upload from now on: the vollstaendig group stays there
s3_ctl($s3, 'faults', { status => 503, methods => ['PUT'] });
is(sign_at_double($src, 'postgres', $ids{vollstaendig}, 'sign'), 0, 'vollstaendig group: all sign (S3 refuses uploads)');
ok(wait_db($src, 'postgres', "SELECT count(*) FROM qes_sign.signatur_anfragen WHERE status = 'vollstaendig' AND id IN ("
	  . in_list(@{ $ids{vollstaendig} }) . ')', $per), "source: $per requests vollstaendig");
# the worker of the source stops (a restart without qes_sign.database)
$src->append_conf('postgresql.conf', "qes_sign.database = ''\n");
$src->restart;
is(worker_pid($src), '', 'source: no worker any more');
for my $s (@statuses)
{
	is(status_count($src, 'postgres', $ids{$s}, $s), $per, "source: the $s group is $s");
}
# one more request, created while the worker is stopped: in the dump it is
# not yet sent; the source sends it after the dump (below)
my ($late) = create_requests($src, 1);
is($src->safe_psql('postgres', 'SELECT ok FROM qes_sign.verify_audit_chain()'), 't', 'source: audit chain ok');

# the tables' fingerprint (rt.fingerprint, shared with r06 and r07): loaded
# into the source, so the dump brings it along into the restored copies
$src->safe_psql('postgres', slurp_file("$FindBin::RealBin/fixtures.sql"));
my $fp_sql = q{SELECT string_agg(format('%s=%s:%s', tbl, n, digest), ' ' ORDER BY tbl) FROM rt.fingerprint()};
my $counts_sql = q{SELECT string_agg(format('%s=%s', tbl, n), ' ' ORDER BY tbl) FROM rt.fingerprint()};
my $seqs_sql = q{SELECT string_agg(sequencename || '=' || coalesce(last_value, 0), ' ' ORDER BY 1)
	FROM pg_sequences WHERE schemaname = 'qes_sign'};
my $src_counts = $src->safe_psql('postgres', $counts_sql);
my $src_fp     = $src->safe_psql('postgres', $fp_sql);
my $src_seqs   = $src->safe_psql('postgres', $seqs_sql);

# ---- dump and restore into a new cluster
my $dump = "$PostgreSQL::Test::Utils::tmp_check/r05.dump";
command_ok([ 'pg_dump', '-Fc', '-d', $src->connstr('postgres'), '-f', $dump ], 'pg_dump -Fc of the source');
# the source goes on after the dump: its worker sends the late request,
# which the restored copy does not know was sent
$src->append_conf('postgresql.conf', "qes_sign.database = 'postgres'\n");
$src->restart;
ok(wait_db($src, 'postgres', "SELECT count(*) FROM qes_sign.signatur_anfragen WHERE provider_id IS NOT NULL AND id = '$late'",
	'1', 30), 'source: after the dump, the late request is sent to Skribble');
$src->append_conf('postgresql.conf', "qes_sign.database = ''\n");
$src->restart;
my $td = time;
my $dst = qes_node('r05dst', double => $d, s3 => $s3,
	conf => { 'qes_sign.reconcile_interval' => "'2s'", 'qes_sign.retry_max_delay' => "'1s'" });
my $trig_sql = q{SELECT string_agg(tgname || '=' || tgenabled::text, ' ' ORDER BY tgname) FROM pg_trigger
	WHERE tgrelid::regclass::text LIKE 'qes_sign.%' AND NOT tgisinternal};
my $src_trig = $src->safe_psql('postgres', $trig_sql);

# restored_ok(db, how): the checks of a restored database; true if its rows are all there
sub restored_ok
{
	my ($db, $how) = @_;
	my $same = is($dst->safe_psql($db, $counts_sql), $src_counts, "$how: every qes_sign table has the same row counts");
	is($dst->safe_psql($db, $fp_sql), $src_fp, "$how: every qes_sign table has the same rows (contents)");
	is($dst->safe_psql($db, $seqs_sql), $src_seqs, "$how: the sequences continue where they were");
	is($dst->safe_psql($db, 'SELECT ok FROM qes_sign.verify_audit_chain()'), 't', "$how: verify_audit_chain() ok")
	  or diag($dst->safe_psql($db, 'SELECT * FROM qes_sign.verify_audit_chain()'));
	for my $s (@statuses)
	{
		is(status_count($dst, $db, $ids{$s}, $s), $per, "$how: the $s group is $s");
	}
	is($dst->safe_psql($db, $trig_sql), $src_trig, "$how: the triggers keep their mode (ENABLE ALWAYS)");
	return $same;
}

# A: pg_restore in restore mode, in one transaction (the README's way)
$dst->safe_psql('postgres', 'CREATE DATABASE restored');
my ($rout, $rerr) = ('', '');
my $ok_a;
{
	local $ENV{PGOPTIONS} = '-c qes_sign.restore=on';
	$ok_a = IPC::Run::run([ 'pg_restore', '--single-transaction', '--exit-on-error', '-d', $dst->connstr('restored'), $dump ],
		'>', \$rout, '2>', \$rerr);
}
ok($ok_a, "A: PGOPTIONS='-c qes_sign.restore=on' pg_restore --single-transaction, without errors") or diag($rerr);
my $same_a = restored_ok('restored', 'A (restore mode)');
is($dst->safe_psql('restored', 'SHOW qes_sign.restore'), 'off', 'A: restore mode ends with the restoring session');

# B: a plain pg_restore, restore mode forgotten: it must fail loudly and
# name the way, never renumber the trail or admit a request in the wrong status
$dst->safe_psql('postgres', 'CREATE DATABASE restored_b');
($rout, $rerr) = ('', '');
my $ok_b = IPC::Run::run([ 'pg_restore', '-d', $dst->connstr('restored_b'), $dump ], '>', \$rout, '2>', \$rerr);
ok(!$ok_b, 'B: a plain pg_restore (restore mode forgotten) reports errors');
like($rerr, qr/audit entry \d+ comes from an existing trail/, 'B: the audit entries are refused, not renumbered');
like($rerr, qr/a new signature request must start in status "offen"/, 'B: requests past offen are refused');
like($rerr, qr/PGOPTIONS='-c qes_sign.restore=on'/, 'B: the error names restore mode');
is($dst->safe_psql('restored_b', 'SELECT count(*) FROM qes_sign.audit_log'), '0', 'B: no audit entry taken in under a new number');
my $restore_s = time - $td;

# ---- the restored cluster's worker takes over database A
my $db = 'restored';
note("the worker resumes database $db");
s3_ctl($s3, 'faults', {});
$dst->append_conf('postgresql.conf', "qes_sign.database = '$db'\n");
$dst->restart;
ok(wait_db($dst, 'postgres', "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'qes_sign worker' AND datname = '$db'", '1', 30),
	"$db: the worker serves the restored database");
is(sign_at_double($dst, $db, $ids{offen}, 'sign'), 0, 'the open requests are signed at the double');
ok(wait_db($dst, $db, "SELECT count(*) FROM qes_sign.signatur_anfragen WHERE status IN ('vollstaendig', 'archiviert') AND id IN ("
	  . in_list(@{ $ids{offen} }) . ')', $per, 60), "$db: the open requests complete");
ok(wait_db($dst, $db, "SELECT count(*) FROM qes_sign.signatur_anfragen WHERE status = 'archiviert' AND id IN ("
	  . in_list(@{ $ids{offen} }, @{ $ids{vollstaendig} }) . ')', 2 * $per, 60),
	"$db: they and the pending vollstaendig ones are archived");
is(status_count($dst, $db, $ids{in_signatur}, 'in_signatur'), $per, "$db: in_signatur untouched");
is(status_count($dst, $db, $ids{abgebrochen}, 'abgebrochen'), $per, "$db: abgebrochen untouched");
is($dst->safe_psql($db, 'SELECT ok FROM qes_sign.verify_audit_chain()'), 't', "$db: audit chain ok after the worker ran");
ok(wait_db($dst, $db, "SELECT count(*) FROM qes_sign.signatur_anfragen WHERE provider_id IS NOT NULL AND id = '$late'", '1', 30),
	"$db: the late request reaches Skribble");
is($dst->safe_psql($db, "SELECT count(*) FROM qes_sign.audit_log WHERE event = 'create_recovered' AND request_id = '$late'"), '1',
	"$db: on another cluster the worker looked it up by custom first and found the source's create");
creates_once_ok($d, [ @all, $late ], 'each request created exactly once at Skribble (no re-submit after the restore)');
for my $n ($src, $dst)
{
	unlike(PostgreSQL::Test::Utils::slurp_file($n->logfile), qr/terminated by signal|PANIC/, $n->name . ': no crash');
}

my ($max) = creates_per_request($d, [ @all, $late ]);
my $crashes = grep { PostgreSQL::Test::Utils::slurp_file($_->logfile) =~ /terminated by signal|PANIC/ } ($src, $dst);
my $kept = $dst->safe_psql($db, 'SELECT count(*) FROM qes_sign.signatur_anfragen WHERE id IN (' . in_list(@all) . ')');
note(sprintf('COUNTS r05_backup_restore: scale=%s requests=%d per_status=%d archived=%d lost=%d '
	  . 'created_at_skribble_max_per_request=%d server_crashes=%d tables=[%s] dump_bytes=%d '
	  . 'restore_mode=%s plain_restore=%s restore+checks=%.1fs elapsed=%.0fs',
	full() ? 'full' : 'reduced', scalar(@all) + 1, $per, status_count($dst, $db, \@all, 'archiviert'), @all - $kept,
	$max, $crashes, $src_counts, -s $dump,
	$same_a ? 'complete' : 'rows lost', $ok_b ? 'accepted' : 'refused', $restore_s, time - $t0));
done_testing();
