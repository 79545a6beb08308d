# r01: requests through the whole lifecycle (submit, sign, vollstaendig,
# archive to S3, archiviert) while the qes_sign worker is killed with
# kill -9 at random moments.  Full: 1,000 requests, 10 kills; reduced: 100
# requests, 3 kills.  Every request ends archiviert, each is created exactly
# once at the provider (Yousign: and activated once), the audit chain
# verifies, and the server log shows no process killed by a signal other
# than the workers killed here.  QES_PROVIDER=skribble (default) or yousign;
# r01_worker_kills_yousign.pl runs it against Yousign.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::RealBin/../perl", $FindBin::RealBin;
use QesTest;
use Reliability;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

my $n     = scaled(1000, 100);
note("double latency: " . ($ENV{QES_R01_LATENCY_MS} // 10) . " ms");
my $kills = scaled(10, 3);
my ($gmin, $gmax) = (scaled(2, 1), scaled(7, 4));
my $seed = $ENV{QES_SEED} // time % 100000;
srand($seed);
note("r01 (" . ucfirst(provider()) . "): $n requests, $kills kills of the worker, gaps ${gmin}-${gmax} s, seed $seed");

my $d    = start_provider();
my $pn   = provider_name($d);
my $s3   = start_s3();
my $node = rnode('r01', $d, $s3);
set_latency($d, $ENV{QES_R01_LATENCY_MS} // 10);    # keep calls in flight when a kill lands

my $t0 = time;
my $kfile = "$PostgreSQL::Test::Utils::tmp_check/r01_kills.txt";
my $killer = start_killer($node, $kills, $gmin, $gmax, $kfile);

# batches of 50: create, wait until submitted, sign; the kills land in all phases
my ($idr, $batches) = sign_in_batches($node, $d, $n, 'R01', 120);
my @ids = @$idr;
is(scalar(@ids), $n, "$n requests created, submitted and signed in $batches batches");
my $list = in_list(@ids);
note(sprintf('all signed after %.1f s', time - $t0));
ok(wait_until($node, "SELECT count(*) FROM qes_sign.signatur_anfragen WHERE status = 'archiviert' AND id IN ($list)",
		$n, scaled(900, 180)), "all $n archiviert")
  or diag('status: ' . status_counts($node, \@ids));
my $t_done = time;
note(sprintf('archiviert after %.1f s', $t_done - $t0));

my @k = finish_killer($killer, $kfile);
my $during = grep { $_->[1] <= $t_done && ($_->[2] // 0) > 0 } @k;
note("kill -9 of worker pid $_->[0] at +" . sprintf('%.1f', $_->[1] - $t0) . " s, $_->[2] requests not archiviert")
  for @k;
is(scalar(@k), $kills, "the worker was killed $kills times");
cmp_ok($during, '>=', 1, "$during kills landed while requests were still open");
# kills after the run: every request must still be (and stay) archiviert
ok(wait_until($node, "SELECT count(*) FROM qes_sign.signatur_anfragen WHERE status = 'archiviert' AND id IN ($list)",
		$n, 60), "all $n still archiviert after the last kill");
ok(wait_until($node, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'qes_sign worker'", '1', 30),
	'a worker runs after the last kill');

save_stats($d);    # tmp_check/log/<script>_stats.json
my $once = exactly_once_ok($d, \@ids, "each of the $n created exactly once at $pn");
is(rpsql($node, 'SELECT ok FROM qes_sign.verify_audit_chain()'), 't', 'audit chain intact');
my $recovered = rpsql($node, "SELECT count(*) FROM qes_sign.audit_log WHERE event = 'create_recovered' AND request_id IN ($list)");
note('creates recovered through ' . lookup_key($d) . " after a kill: $recovered");

my $b = bucket_check($node, $s3, \@ids);
ok($b->{verified} == 4 * $n && !@{ $b->{missing} } && $b->{incomplete} == 0,
	"the bucket holds the 4 objects of every request with matching sha256 ($b->{verified} verified)")
  or diag("missing/different: @{$b->{missing}}[0..4]; incomplete: $b->{incomplete}");
is(scalar(@{ $b->{stray} }) + scalar(@{ $b->{half} }), 0, 'no stray or half-written object in the bucket');

my %killed = map { $_->[0] => 1 } @k;
my ($deaths, $reinit, $panic) = log_deaths($node);
my @other = grep { !($killed{ $_->[0] } && $_->[1] == 9) } @$deaths;
my $killed_logged = grep { $killed{ $_->[0] } && $_->[1] == 9 } @$deaths;
is($killed_logged, scalar(@k), 'the server log shows each killed worker terminated by signal 9');
is(scalar(@other), 0, 'no other process terminated by a signal');
diag($_->[2]) for @other;
is($panic, 0, 'no PANIC in the server log');
note("crash reinitializations of the postmaster after the kills: $reinit");
my $ops = ops($node);

counts_line('r01_worker_kills',
	outcome_counts($d, $once, $n, count_where($node, "status = 'archiviert' AND id IN ($list)")),
	faults_injected => 0,
	worker_kills => scalar(@k),
	kills_while_open => $during,
	create_recovered => $recovered,
	server_crashes => scalar(@other) + $panic,
	crash_reinitializations => $reinit,
	api_calls => $ops->{api_calls} // '',
	api_retries => $ops->{api_retries} // '',
	seconds => sprintf('%.0f', time - $t0),
	seed => $seed);

$node->stop;
done_testing();
