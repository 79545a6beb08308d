# r08: high availability with Patroni.  One etcd and two PostgreSQL 15
# nodes managed by Patroni (Debian's etcd-server and patroni), on loopback,
# configured the way README "High availability" says: qes_sign's settings in
# the cluster-wide bootstrap.dcs postgresql.parameters, its secrets in each
# node's own patroni.yml.  Requests (full: 200; reduced: 40) go through the
# lifecycle to archiviert in three waves: A (2/5) is created and signed on
# pg1; B (1/5) is created slowly (1.5 s a call at the double) and in flight
# when Patroni switches over to pg2 (POST /switchover, what patronictl
# switchover --force sends); C (2/5): half with a third of the create
# answers cut, half slow and in flight when pg2's postmaster is killed (-9):
# with primary_start_timeout = 0 Patroni hands the leader key to pg1 instead
# of restarting the crashed primary in place, and brings pg2 back as a
# replica (pg_rewind).  The test's SQL goes to whichever node holds the
# leader key (Patroni.pm's leader_handle); the callback relay is restarted
# on the new leader after each change (as a portal would reconnect).
#
# Asserts: every request archiviert, each created exactly once at the
# provider, none lost, the audit chain intact, the bucket complete, the
# replica consistent at the end, and the worker working on the leader only:
# a sampler reads each node's own counters (api_calls + logins +
# calls_in_flight from qes_sign.operations: shared memory, reset at each
# postmaster start) and then pg_is_in_recovery(), round after round;
# calls_from_replica sums, over every life of a postmaster seen in
# recovery, the counters read while it was still in recovery.  It also
# measures what the old leader's worker does after its postmaster was
# killed (calls_after_postmaster_death: new calls at the double before pg1 is
# promoted: none).
#
# QES_PROVIDER=yousign runs it against the Yousign double;
# QES_R08_REQUESTS=n another number of requests; QES_R08_LATENCY_MS the
# double's latency for the slow half of wave C (1500); QES_R08_KEEP_LATENCY=1
# keeps that latency after the kill (the orphaned worker then goes on for
# minutes: see test/reliability/README.md).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::RealBin/../perl", $FindBin::RealBin;
use POSIX ();
use QesTest;
use Reliability;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Patroni;
use Test::More;
use Time::HiRes qw(time sleep usleep);

my $n = $ENV{QES_R08_REQUESTS} // scaled(200, 40);
note("r08 (" . ucfirst(provider()) . "): $n requests, two Patroni nodes, a switchover and a failover");
for my $cmd (qw(etcd patroni patronictl))
{
	system("command -v $cmd >/dev/null 2>&1") == 0
	  or die "$cmd is not installed (Debian packages etcd-server and patroni; test/setup.sh)\n";
}

my $t0 = time;
my $d  = start_provider();
my $pn = provider_name($d);
my $yousign = provider() eq 'yousign';
my $s3 = start_s3();
my $etcd = start_etcd();
note("etcd on port $etcd->{port}");

# the callback relay: its port is in callback_base_url (the same on every
# node); it connects lazily and is restarted on the leader after each change
my $user = getpwuid($<);
my $relay_js = "$FindBin::RealBin/../relay/relay.js";
my $relay = QesTest::start_child('relay', 'node', $relay_js, '--port', 0,
	'--db', "host=127.0.0.1 port=1 dbname=postgres user=$user", '--verbose');
my $relay_port = $relay->{port};
sub relay_to
{
	my ($node) = @_;
	stop_child($relay);
	$relay = QesTest::start_child('relay', 'node', $relay_js, '--port', $relay_port,
		'--db', sprintf('host=%s port=%s dbname=postgres user=%s', $node->host, $node->port, $user), '--verbose');
	return;
}

# the cluster-wide configuration (bootstrap.dcs; Patroni keeps it in etcd):
# everything but the secrets, which each node has in its own patroni.yml
my %shared = (
	shared_preload_libraries       => 'qes_sign',
	'qes_sign.database'            => 'postgres',
	'qes_sign.callback_base_url'   => "http://127.0.0.1:$relay_port/qes/callback",
	'qes_sign.s3_endpoint'         => $s3->{url},
	'qes_sign.s3_region'           => 'us-east-1',
	'qes_sign.s3_bucket'           => $s3->{bucket},
	'qes_sign.reconcile_interval'  => '5s',
	'qes_sign.retry_base_delay'    => '100ms',
	'qes_sign.retry_max_delay'     => '2s',
	'qes_sign.http_timeout'        => '2s',
	'qes_sign.worker_restart_delay' => 1,
	($yousign
		? ('qes_sign.yousign_url' => "$d->{url}/v3", 'qes_sign.provider' => 'yousign')
		: ('qes_sign.skribble_url' => "$d->{url}/v2")),
	max_connections => 60,
	shared_buffers  => '32MB',
	wal_keep_size   => '256MB',
	log_statement   => 'none');
my %secrets = (
	'qes_sign.callback_secret' => 'tap-test-callback-secret-0123456789abcdef',
	'qes_sign.s3_access_key'   => $s3->{access_key},
	'qes_sign.s3_secret_key'   => $s3->{secret_key},
	($yousign
		? ('qes_sign.yousign_api_key' => 'test-key', 'qes_sign.yousign_webhook_secrets' => $d->{secret})
		: ('qes_sign.skribble_username' => 'api_demo_qes_sign', 'qes_sign.skribble_api_key' => 'test-key')));
my %dcs = (
	ttl                     => 10,
	loop_wait               => 1,
	retry_timeout           => 4,
	maximum_lag_on_failover => 16 * 1024 * 1024,
	primary_start_timeout   => 0,    # a crashed primary fails over instead of restarting in place
	postgresql => { use_pg_rewind => JSON::PP::true, use_slots => JSON::PP::true, parameters => \%shared });
my @nodes = map { patroni_node($_, $etcd, dcs => \%dcs, parameters => \%secrets) } qw(pg1 pg2);
my ($pg1, $pg2) = @nodes;
my $L = leader_handle(@nodes);
$L->{qes_provider} = provider();

# bootstrap: pg1 initializes the cluster, pg2 clones it
start_patroni($pg1);
my $leader = wait_leader(90, @nodes);
is($leader->name, 'pg1', 'pg1 bootstrapped the cluster and leads');
$leader->safe_psql('postgres', 'CREATE EXTENSION qes_sign CASCADE');
relay_to($leader);
yousign_hook($d, { relay => { port => $relay_port } }) if $yousign;
start_patroni($pg2);
ok(wait_replica_streaming($pg1, $pg2, 90), 'pg2 streams from pg1 as a replica');
ok(wait_until($pg2, "SELECT query FROM pg_stat_activity WHERE backend_type = 'qes_sign worker'",
		'standby: waiting for promotion', 30), 'the worker on the replica waits for promotion');
is($pg1->safe_psql('postgres', 'SHOW qes_sign.database') . ' ' . $pg2->safe_psql('postgres', 'SHOW qes_sign.database'),
	'postgres postgres', 'both nodes have the settings Patroni keeps in etcd');
note(sprintf('cluster up after %.1f s', time - $t0));

# ---- the sampler: each node's own counters, then pg_is_in_recovery()
my $samples = "$PostgreSQL::Test::Utils::tmp_check/r08_samples.tsv";
my $stop_file = "$samples.stop";
unlink $samples, $stop_file;
my $sampler = fork() // die "fork: $!";
if ($sampler == 0)
{
	my $sql = q{SELECT pg_postmaster_start_time(),
	         (SELECT coalesce(sum(value), 0) FROM qes_sign.operations WHERE metric IN ('api_calls', 'logins', 'calls_in_flight')),
	         coalesce((SELECT query FROM pg_stat_activity WHERE backend_type = 'qes_sign worker' LIMIT 1), '-');
	       SELECT pg_is_in_recovery();};
	$SIG{PIPE} = 'IGNORE';
	eval {
		open my $fh, '>>', $samples or die "$samples: $!";
		$fh->autoflush(1);
		while (!-e $stop_file && getppid() != 1)
		{
			for my $node (@nodes)
			{
				my ($o, $e) = ('', '');
				# a node that is down or restarting: no sample (psql may die of a broken pipe)
				eval { $node->psql('postgres', $sql, stdout => \$o, stderr => \$e); 1 } or next;
				my @l = split /\n/, $o;
				next unless @l == 2 && $l[1] =~ /^[tf]$/;
				my ($start, $calls, $activity) = split /\|/, $l[0];
				printf $fh "%.3f\t%s\t%s\t%s\t%s\t%s\n", time, $node->name, $start, $calls, $l[1], $activity;
			}
			usleep(100_000);
		}
		1;
	} or print STDERR "sampler: $@";
	POSIX::_exit(0);
}
END { if ($sampler) { open my $f, '>', $stop_file; close $f; kill 'TERM', $sampler; waitpid($sampler, 0); } }

my (@ids, %signed);
sub sign_these
{
	my ($ids, $what) = @_;
	my @todo = grep { !$signed{$_} } @$ids;
	is(rsign($d, $L, \@todo), 0, scalar(@todo) . " $what signed at the $pn double");
	$signed{$_} = 1 for @todo;
	return;
}
sub submitted_where { return "provider_id IS NOT NULL AND id IN (" . in_list(@_) . ')'; }
# wait_stored(ids, fraction, timeout, in_flight): until that fraction of ids
# is stored at the double (and, with in_flight, calls are in flight there)
sub wait_stored
{
	my ($w, $frac, $timeout, $need) = @_;
	my $deadline = time + $timeout;
	my ($stored, $in_flight) = (0, 0);
	while (time < $deadline)
	{
		my $st = double_stats($d);
		my $created = created_at_double($d, $st);
		$stored = grep { $created->{$_} } @$w;
		$in_flight = $st->{in_flight};
		last if $stored >= @$w * $frac && ($in_flight > 0 || !$need);
		sleep 0.05;
	}
	return ($stored, $in_flight);
}
# replica_calls(node): its own counters and then whether it is in recovery (both read now)
sub replica_calls
{
	my ($node) = @_;
	my $o = rpsql($node, "SELECT (SELECT coalesce(sum(value), 0) FROM qes_sign.operations WHERE metric IN "
		  . "('api_calls', 'logins', 'calls_in_flight'));\nSELECT pg_is_in_recovery();");
	my ($calls, $rec) = split /\n/, $o;
	return $rec eq 't' ? $calls : undef;
}

# ---- wave A: created and signed on pg1, on their way to the archive at the switchover
my $nA = int($n * 2 / 5);
my @a = rcreate($L, $nA, 'R08a', 50);
push @ids, @a;
ok(wait_until($L, 'SELECT count(*) FROM qes_sign.signatur_anfragen WHERE ' . submitted_where(@a), $nA, 60),
	"wave A: $nA submitted by pg1");
sign_these(\@a, 'wave A');

# ---- wave B: slow creates (1.5 s at the double, below http_timeout) in
# flight at the switchover: the old leader's fast shutdown cuts them
my $nB = int($n / 5);
set_latency($d, 1500);
my @b = rcreate($L, $nB, 'R08b', 50);
push @ids, @b;
my ($stored_b, $in_flight_b) = wait_stored(\@b, 0, 30, 1);
my $calls_pg2 = replica_calls($pg2);
is($calls_pg2, 0, 'pg2 made no API call while it was a replica (before the switchover)');
$in_flight_b = double_stats($d)->{in_flight};
my $t_sw = time;
# Patroni's REST API, as patronictl switchover --force calls it (at once: the creates are in flight)
my ($rc, $out) = patroni_post($pg1, '/switchover', { leader => 'pg1', candidate => 'pg2' });
note("POST /switchover: $rc $out");
is($rc, 200, 'switchover to pg2 accepted');
$leader = wait_leader(60, @nodes);
my $sw_seconds = time - $t_sw;
is($leader->name, 'pg2', 'pg2 leads after the switchover');
relay_to($pg2);
set_latency($d, 0);
ok(wait_replica_streaming($pg2, $pg1, 90), 'pg1 is back as a replica of pg2');
my $sw_rejoin = time - $t_sw;
note(sprintf('switchover with %d of wave B stored at the double and %d calls in flight: pg2 leads after %.1f s, '
	  . 'pg1 streams after %.1f s', $stored_b, $in_flight_b, $sw_seconds, $sw_rejoin));
ok(wait_until($L, 'SELECT count(*) FROM qes_sign.signatur_anfragen WHERE ' . submitted_where(@a, @b),
		$nA + $nB, 60), 'waves A and B submitted')
  or diag('status: ' . status_counts($L, [ @a, @b ]));
sign_these(\@b, 'wave B');

# ---- wave C: half of it with a third of the create answers cut (stored
# at the double, answer lost) before the failover; the other half slow
# (1.5 s at the double, below http_timeout) and in flight at the kill
my $nC = $n - $nA - $nB;
my $nC1 = int($nC / 2);
set_latency($d, 400);
ctl_post($d, 'faults', failover_faults($d));
my @c1 = rcreate($L, $nC1, 'R08c', 50);
wait_stored(\@c1, 1, 60);
set_latency($d, $ENV{QES_R08_LATENCY_MS} // 1500);
my @c2 = rcreate($L, $nC - $nC1, 'R08d', 50);
my @c = (@c1, @c2);
push @ids, @c;
my $list = in_list(@ids);
# the portal's own commits (create_request) must have reached the replica:
# losing them is asynchronous replication's doing, not the worker's
ok(wait_until($pg1, "SELECT count(*) FROM qes_sign.signatur_anfragen WHERE id IN ($list)", $n, 30),
	"all $n requests replicated to pg1");
my ($stored_c, $in_flight_c) = wait_stored(\@c2, 0, 30, 1);
my $calls_pg1 = replica_calls($pg1);
is($calls_pg1, 0, 'pg1 made no API call while it was a replica (before the failover)');
my $on_leader = count_where($pg2, recorded_where($d) . " AND id IN ($list)");
my $pm = postmaster_pid($pg2);
my $worker_pid = rpsql($pg2, "SELECT pid FROM pg_stat_activity WHERE backend_type = 'qes_sign worker'");
my $st_kill = double_stats($d);
$in_flight_c = $st_kill->{in_flight};
ok($pm && kill('KILL', $pm), "kill -9 of pg2's postmaster ($pm)");
my $t_fail = time;
ctl_post($d, 'faults', {});
set_latency($d, 0) unless $ENV{QES_R08_KEEP_LATENCY};    # the calls in flight keep the latency they arrived with
my $created = created_at_double($d);
my $sent = grep { $created->{$_} } @ids;
# what pg1 knows at the failover (Patroni promotes it a loop or two later):
# its provider ids, and the submits marked posted but not answered
my ($recorded, $posted_open, $still_replica) = split /\n/, rpsql($pg1,
	'SELECT count(*) FROM qes_sign.signatur_anfragen WHERE ' . recorded_where($d) . " AND id IN ($list);\n"
	  . "SELECT count(*) FROM qes_sign.work_items WHERE kind = 'submit' AND state = 'pending' AND payload ? 'posted' "
	  . "AND request_id IN ($list);\nSELECT pg_is_in_recovery();");
my $unknown = $sent - $recorded;
note(sprintf('failover (wave C: %d with cut answers, then %d slow): pg2 killed with %d creates stored at the double, '
	  . '%d recorded on pg2 just before, %d calls in flight; on pg1 %s: %d recorded, %d sent but not recorded there, %d submits marked posted',
	$nC1, $nC - $nC1, $sent, $on_leader, $in_flight_c, $still_replica eq 't' ? 'before its promotion' : 'already promoted (!)',
	$recorded, $unknown, $posted_open));
cmp_ok($unknown + $posted_open, '>', 0, 'the failover left creates whose outcome the new leader does not know');

# the old leader's worker, orphaned by the kill: how long it lives on, and
# the calls the double receives before pg1 is promoted (pg1 makes none
# before, see the sampler; a call already in flight at the kill was counted
# on its arrival): those come from the orphan
my ($orphan_s, $promoted_s, $orphan_calls, $orphan_creates);
# create_calls(stats): the creates the double received (counted on arrival; Yousign: drafts)
sub create_calls
{
	my ($st) = @_;
	my $c = 0;
	$c += $st->{calls}{$_} for grep { /^POST \/v\d\/signature[-_]requests$/ } keys %{ $st->{calls} };
	return $c;
}
sub gone { my ($pid) = @_; open my $f, '<', "/proc/$pid/stat" or return 1; return (split ' ', <$f>)[2] eq 'Z'; }
while (time - $t_fail < 20 && !(defined $orphan_s && defined $promoted_s))
{
	$orphan_s //= time - $t_fail if gone($worker_pid);
	unless (defined $promoted_s)
	{
		my ($o, $e) = ('', '');
		eval { $pg1->psql('postgres', 'SELECT pg_is_in_recovery()', stdout => \$o, stderr => \$e) };
		if ($o eq 'f')
		{
			$promoted_s = time - $t_fail;
			my $st = double_stats($d);
			$orphan_calls = $st->{total_calls} - $st_kill->{total_calls};
			$orphan_creates = create_calls($st) - create_calls($st_kill);
		}
	}
	sleep 0.05;
}
my $orphan_txt = defined $orphan_s ? sprintf('%.1f', $orphan_s) : '>' . sprintf('%.0f', time - $t_fail);
note(sprintf("pg2's worker (pid %s) lived %s s after its postmaster's death; pg1 was promoted %.1f s after the kill; "
	  . 'in between the double received %d new calls, %d of them creates',
	$worker_pid, $orphan_txt, $promoted_s // -1, $orphan_calls // -1, $orphan_creates // -1));
# (the worker checks for its postmaster after every wait in curl and
# before every step: found by this suite, which saw it call on for minutes.
# The calls counted until pg1 is seen promoted may be pg1's own first ones
# after its promotion: the orphan's exit is what is asserted)
ok(defined $orphan_s && $orphan_s < 2,
	"the old leader's worker exits within 2 s of its postmaster's death (after $orphan_txt s)");
$leader = wait_leader(90, @nodes);
my $fo_seconds = $promoted_s // time - $t_fail;
is($leader->name, 'pg1', 'Patroni promoted pg1 after the kill');
relay_to($pg1);
ok(wait_replica_streaming($pg1, $pg2, 120), 'Patroni brought pg2 back as a replica of pg1');
my $fo_rejoin = time - $t_fail;
note(sprintf('pg1 leads %.1f s after the kill, pg2 streams after %.1f s', $fo_seconds, $fo_rejoin));

# ---- the rest: every request submitted, signed and archived by the leader
my $submitted = ok(wait_until($L, "SELECT count(*) FROM qes_sign.signatur_anfragen WHERE provider_id IS NOT NULL "
		  . "AND id IN ($list)", $n, scaled(300, 120)), "the leader has all $n submitted")
  or diag('status: ' . status_counts($L, \@ids));
sign_these(\@ids, 'other requests');
ok(wait_until($L, "SELECT count(*) FROM qes_sign.signatur_anfragen WHERE status = 'archiviert' AND id IN ($list)",
		$n, scaled(600, 180)), "all $n archiviert")
  or diag('status: ' . status_counts($L, \@ids));
my $archived = count_where($L, "status = 'archiviert' AND id IN ($list)");
ok(wait_until($pg2, "SELECT count(*) FROM qes_sign.signatur_anfragen WHERE status = 'archiviert' AND id IN ($list)",
		$archived, 60), 'the replica (pg2, the old leader) holds the same');
my $last_calls = replica_calls($pg2);
is($last_calls, 0, 'pg2 made no API call as a replica (after the failover)');

# ---- the sampler's verdict
{ open my $f, '>', $stop_file; close $f; }
waitpid($sampler, 0);
$sampler = 0;
my (%life, $rows, $replica_rows, @odd);
open my $fh, '<', $samples or die "$samples: $!";
while (<$fh>)
{
	chomp;
	my ($t, $node, $start, $calls, $rec, $activity) = split /\t/;
	$rows++;
	next unless $rec eq 't';
	$replica_rows++;
	my $k = "$node $start";
	$life{$k}{max} = $calls if !defined $life{$k}{max} || $calls > $life{$k}{max};
	$life{$k}{waiting}++ if $activity eq 'standby: waiting for promotion';
	push @odd, "$node: $activity" unless $activity eq 'standby: waiting for promotion' || $activity eq '-';
}
close $fh;
# the reads just before each promotion and at the end count too
my $calls_from_replica = 0;
$calls_from_replica += $_->{max} for values %life;
$calls_from_replica += ($calls_pg1 // 0) + ($calls_pg2 // 0) + ($last_calls // 0);
my @lives = sort keys %life;
my $waiting_lives = grep { $life{$_}{waiting} } @lives;
note("sampler: $rows samples, $replica_rows of a node in recovery, " . scalar(@lives) . " replica lives: "
	  . join(', ', map { "$_ max=$life{$_}{max} waiting=" . ($life{$_}{waiting} // 0) } @lives));
is($calls_from_replica, 0, 'no API call from a node while it was a replica');
cmp_ok(scalar(@lives), '>=', 3, 'the sampler saw the three replica lives (pg2, pg1 after the switchover, pg2 after the failover)');
cmp_ok($waiting_lives, '>=', 3, "the replica's worker said 'standby: waiting for promotion' in three of them at least");
is(scalar(@odd), 0, 'and never anything else') or diag("@odd[0 .. ($#odd < 4 ? $#odd : 4)]");

# ---- exactly once, the trail, the bucket, the logs
save_stats($d);
my $once = exactly_once_ok($d, \@ids, "each of the $n created exactly once at $pn across the switchover and the failover");
for my $id (@{ $once->{twice} }[ 0 .. ($#{ $once->{twice} } < 2 ? $#{ $once->{twice} } : 2) ])
{
	diag('created ' . created_at_double($d)->{$id} . " times: $id; events: " . join(' ', @{ events($L, $id) }));
}
my %recovered = map { my @c = split /\|/; ($c[0] => $c[1]) } grep { length } split /\n/, rpsql($L,
	"SELECT w.wave, count(*) FROM qes_sign.audit_log l JOIN (VALUES "
	  . join(', ', (map { "('$_'::uuid, 'a')" } @a), (map { "('$_'::uuid, 'b')" } @b), (map { "('$_'::uuid, 'c')" } @c))
	  . ") AS w(id, wave) ON w.id = l.request_id WHERE l.event = 'create_recovered' GROUP BY 1");
my $recovered = 0;
$recovered += $_ for values %recovered;
# _worker_started(true) logs how many pending creates, not yet marked posted, it marked after a promotion
my @looked_up = (promotions_logged($pg1), promotions_logged($pg2));
my $looked_up = 0;
$looked_up += $_ for @looked_up;
note('creates recovered through ' . lookup_key($d) . ": $recovered (wave A: " . ($recovered{a} // 0)
	  . ', wave B, in flight at the switchover: ' . ($recovered{b} // 0) . ', wave C, answers cut and in flight at the failover: '
	  . ($recovered{c} // 0) . "); creates not yet posted marked at a promotion: $looked_up");
is(rpsql($L, 'SELECT ok FROM qes_sign.verify_audit_chain()'), 't', 'audit chain intact on the leader');
my $b = bucket_check($L, $s3, \@ids);
ok($b->{verified} == 4 * $n && !@{ $b->{missing} } && $b->{incomplete} == 0 && !@{ $b->{stray} } && !@{ $b->{half} },
	"the bucket holds exactly the 4 objects of every request with matching sha256 ($b->{verified} verified)")
  or diag("missing/different: @{$b->{missing}}[0..4]; stray: @{$b->{stray}}[0..4]; incomplete: $b->{incomplete}");
my ($crashes, $rewinds) = (0, 0);
for my $node (@nodes)
{
	my ($deaths, $reinit, $panic) = log_deaths($node);
	is(scalar(@$deaths) + $panic, 0, $node->name . ': no process terminated by a signal, no PANIC');
	diag($_->[2]) for @$deaths;
	$crashes += @$deaths + $panic;
	my $plog = slurp_file("$PostgreSQL::Test::Utils::log_path/r08_patroni_patroni_" . $node->name . '.log');
	$rewinds += () = $plog =~ /pg_rewind exit code=0/g;
}
my $history = patroni_history($leader);
my (undef, $topology) = patronictl($leader, 'list');
note("patronictl list:\n$topology");

counts_line('r08_patroni',
	outcome_counts($d, $once, $n, $archived),
	switchovers => 1,
	failovers => 1,
	calls_from_replica => $calls_from_replica,
	replica_lives => scalar(@lives),
	replica_samples => $replica_rows // 0,
	in_flight_at_switchover => $in_flight_b,
	in_flight_at_failover => $in_flight_c,
	calls_after_postmaster_death => $orphan_calls // -1,
	creates_after_postmaster_death => $orphan_creates // -1,
	orphan_worker_s => $orphan_txt,
	sent_at_failover => $sent,
	recorded_on_replica_at_failover => $recorded,
	sent_not_recorded => $unknown,
	posted_open_at_failover => $posted_open,
	marked_at_promotion => $looked_up,
	create_recovered => $recovered,
	create_recovered_switchover_wave => $recovered{b} // 0,
	create_recovered_failover_wave => $recovered{c} // 0,
	timelines => scalar(@$history) + 1,
	pg_rewinds => $rewinds,
	switchover_s => sprintf('%.1f', $sw_seconds),
	failover_s => sprintf('%.1f', $fo_seconds),
	rejoin_s => sprintf('%.1f', $fo_rejoin),
	server_crashes => $crashes,
	seconds => sprintf('%.0f', time - $t0));

stop_patroni($_) for grep { $_ != $leader } @nodes;    # the replica first: no promotion on the way out
stop_patroni($leader);
done_testing();
