# r04: failover.  A primary with a streaming standby, both configured
# against the same Skribble double and S3 bucket; requests in flight (full:
# 500; reduced: 50), some already signed; the primary is stopped hard
# (immediate: its worker dies with calls in flight) and the standby
# promoted; the callback relay now delivers to the new primary.  The new
# primary's worker finishes every request to archiviert, and none is
# created twice at Skribble: creates sent but not recorded (or not yet
# replicated) at the failover must be found again through custom.
# QES_R04_SYNC=1 runs with synchronous replication (synchronous_standby_names = '*').
use strict;
use warnings;
use FindBin;
use lib "$FindBin::RealBin/../perl", $FindBin::RealBin;
use QesTest;
use Reliability;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

my $n    = scaled(500, 50);
my $sync = $ENV{QES_R04_SYNC} ? 1 : 0;
note("r04: $n requests, " . ($sync ? 'synchronous' : 'asynchronous') . ' streaming replication');

my $d  = start_double();
my $s3 = start_s3();
my $primary = rnode('primary', $d, $s3, streaming => 1);
$primary->backup('base');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'base', has_streaming => 1);
$standby->start;
if ($sync)
{    # only now: CREATE EXTENSION above would wait for a standby that does not exist yet
	$primary->safe_psql('postgres', "ALTER SYSTEM SET synchronous_standby_names = '*'");
	$primary->safe_psql('postgres', 'SELECT pg_reload_conf()');
}
ok(wait_until($standby, "SELECT query FROM pg_stat_activity WHERE backend_type = 'qes_sign worker'",
		'standby: waiting for promotion', 30), 'the standby worker waits for promotion');

my $t0 = time;
# wave 1 (a fifth): submitted and signed, on its way to vollstaendig and the archive at the failover
my $n1 = int($n / 5);
my @w1 = rcreate($primary, $n1, 'R04a', 50);
ok(wait_until($primary, "SELECT count(*) FROM qes_sign.signatur_anfragen WHERE provider_id IS NOT NULL AND id IN ("
		  . in_list(@w1) . ')', $n1, 60), "wave 1: $n1 submitted");
my @signed = @w1;
is(rsign($d, $primary, \@signed), 0, "wave 1: $n1 signed before the failover");
# wave 2: slow creates, a third of them stored at the double with the connection cut before the answer
ctl_post($d, 'latency', { ms => 0 + ($ENV{QES_R04_LATENCY_MS} // 400) });
ctl_post($d, 'faults', { drop_after_create_rate => 0.3, seed => 11 });
my @w2 = rcreate($primary, $n - $n1, 'R04b', 50);
my @ids = (@w1, @w2);
my $list = in_list(@ids);
my $l2 = in_list(@w2);
# fail over while wave 2 is being submitted
my $deadline = time + 60;
my $in_flight = 0;
while (time < $deadline)
{
	my $st = double_stats($d);
	my $stored = grep { $st->{creates_by_custom}{$_} } @w2;
	$in_flight = $st->{in_flight};
	last if $stored >= @w2 / 3 && $in_flight > 0;
	sleep 0.05;
}
my $on_primary = count_where($primary, "provider_id IS NOT NULL AND id IN ($list)");
$primary->stop('immediate');
my $t_fail = time;
ctl_post($d, 'faults', {});
ctl_post($d, 'latency', { ms => 0 });
my $st = double_stats($d);
my $sent = grep { $st->{creates_by_custom}{$_} } @ids;
note(sprintf('primary stopped (immediate) at +%.1f s: %d calls in flight at the double just before, %d creates stored, '
	  . '%d recorded on the primary', $t_fail - $t0, $in_flight, $sent, $on_primary));

# what the standby knows at the failover (it is readable before the promotion)
my $recorded = count_where($standby, "provider_id IS NOT NULL AND id IN ($list)");
my $posted_open = rpsql($standby, "SELECT count(*) FROM qes_sign.work_items WHERE kind = 'submit' AND state = 'pending' "
	  . "AND payload ? 'posted' AND request_id IN ($list)");
my $unknown = $sent - $recorded;
note("on the standby at the failover: $recorded requests with their Skribble id, "
	  . "$unknown sent but not recorded there, $posted_open submits marked posted");

cmp_ok($unknown + $posted_open, '>', 0, 'the failover left creates whose outcome the new primary does not know');

# the portal's callback endpoint now delivers to the new primary: the relay
# on the same port, connected to the standby
my $port = $primary->{relay}{port};
stop_child($primary->{relay});
my $user = getpwuid($<);
QesTest::start_child('relay_standby', 'node', "$FindBin::RealBin/../relay/relay.js", '--port', $port,
	'--db', sprintf('host=%s port=%s dbname=postgres user=%s', $standby->host, $standby->port, $user), '--verbose');
$standby->promote;
my $t_prom = time;
ok(wait_until($standby, "SELECT count(*) FROM qes_sign.signatur_anfragen WHERE provider_id IS NOT NULL AND id IN ($list)",
		$n, scaled(300, 120)), "the new primary has all $n submitted")
  or diag('status: ' . status_counts($standby, \@ids));
my %done = map { $_ => 1 } @signed;
my @rest = grep { !$done{$_} } @ids;
is(rsign($d, $standby, \@rest), 0, scalar(@rest) . ' other requests signed after the failover');
ok(wait_until($standby, "SELECT count(*) FROM qes_sign.signatur_anfragen WHERE status = 'archiviert' AND id IN ($list)",
		$n, scaled(600, 180)), "the new primary archived all $n")
  or diag('status: ' . status_counts($standby, \@ids));
note(sprintf('all archiviert %.1f s after the promotion', time - $t_prom));

my ($max, $missing) = creates_per_request($d, \@ids);
my $by = double_stats($d)->{creates_by_custom} // {};
my @twice = grep { ($by->{$_} // 0) > 1 } @ids;
creates_once_ok($d, \@ids, "each of the $n created exactly once at Skribble across the failover");
if (@twice)
{
	for my $id (@twice[ 0 .. ($#twice < 2 ? $#twice : 2) ])
	{
		diag("created $by->{$id} times: $id; events on the new primary: "
			  . join(' ', @{ events($standby, $id) }));
	}
}
my $recovered = rpsql($standby, "SELECT count(*) FROM qes_sign.audit_log WHERE event = 'create_recovered' AND request_id IN ($list)");
note("creates recovered through custom on the new primary: $recovered");
is(rpsql($standby, 'SELECT ok FROM qes_sign.verify_audit_chain()'), 't', 'audit chain intact on the new primary');
my $b = bucket_check($standby, $s3, \@ids);
ok($b->{verified} == 4 * $n && !@{ $b->{missing} } && $b->{incomplete} == 0 && !@{ $b->{stray} } && !@{ $b->{half} },
	"the bucket holds exactly the 4 objects of every request with matching sha256 ($b->{verified} verified)")
  or diag("missing/different: @{$b->{missing}}[0..4]; stray: @{$b->{stray}}[0..4]; incomplete: $b->{incomplete}");
my ($deaths, $reinit, $panic) = log_deaths($standby);
is(scalar(@$deaths) + $panic, 0, 'no process of the new primary terminated by a signal, no PANIC');
diag($_->[2]) for @$deaths;

my $archived = count_where($standby, "status = 'archiviert' AND id IN ($list)");
counts_line('r04_failover',
	requests => $n,
	archived => $archived,
	created_at_skribble_max_per_request => $max,
	created_twice => scalar(@twice),
	not_created_exactly_once => $missing,
	lost => $n - $archived,
	replication => $sync ? 'sync' : 'async',
	signed_before_failover => scalar(@signed),
	calls_in_flight_at_failover => $in_flight,
	sent_at_failover => $sent,
	recorded_on_standby_at_failover => $recorded,
	sent_not_recorded => $unknown,
	create_recovered => $recovered,
	faults_injected => 1,
	worker_kills => 0,
	server_crashes => scalar(@$deaths) + $panic,
	seconds => sprintf('%.0f', time - $t0));

$standby->stop;
done_testing();
