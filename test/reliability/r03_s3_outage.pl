# r03: the S3 server is stopped while requests complete (full: 200 requests,
# 60 s outage; reduced: 20 requests, 10 s).  The stop lands while the first
# requests are being archived.  No request reaches archiviert while S3 is
# down; all are archived once it is back; every archiviert request's four
# objects are in the bucket (read back with boto3, test/s3/check.py) with
# the sha256 recorded in archive_objects and in x-amz-meta-sha256; no stray
# or half-written object.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::RealBin/../perl", $FindBin::RealBin;
use QesTest;
use Reliability;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

my $n      = scaled(200, 20);
my $outage = scaled(60, 10);
note("r03: $n requests, S3 down for $outage s");

my $d    = start_double();
my $s3   = start_s3();
my $node = rnode('r03', $d, $s3);
my $t0 = time;
my @ids = rcreate($node, $n, 'R03', 50);
my $list = in_list(@ids);
ok(wait_until($node, "SELECT count(*) FROM qes_sign.signatur_anfragen WHERE provider_id IS NOT NULL AND id IN ($list)",
		$n, 120), "all $n submitted");
# a tenth is signed first; S3 stops as soon as the first of them is archived,
# while the others are being archived; the rest complete during the outage
my $first = int($n / 10) < 2 ? 2 : int($n / 10);
my @a = @ids[ 0 .. $first - 1 ];
my @rest = @ids[ $first .. $#ids ];
is(rsign($d, $node, \@a), 0, "the first $first requests signed");
wait_until($node, "SELECT count(*) > 0 FROM qes_sign.signatur_anfragen WHERE status = 'archiviert' AND id IN ($list)",
	't', 60);
stop_s3($s3);
my $t_stop = time;
is(rsign($d, $node, \@rest), 0, 'the other ' . scalar(@rest) . ' signed while S3 is down');
my $before = count_where($node, "status = 'archiviert' AND id IN ($list)");
note("S3 stopped with $before of $n archiviert");
ok(wait_until($node, "SELECT count(*) FROM qes_sign.signatur_anfragen WHERE status IN ('vollstaendig', 'archiviert') "
		  . "AND id IN ($list)", $n, 120), "all $n vollstaendig (or archiviert before the stop)");
my $max_during = 0;
while (time < $t_stop + $outage)
{
	my $c = count_where($node, "status = 'archiviert' AND id IN ($list)");
	$max_during = $c if $c > $max_during;
	sleep 0.5;
}
my $errors = rpsql($node, "SELECT count(*) FROM qes_sign.request_errors WHERE kind = 'archive' AND request_id IN ($list)");
my ($fmin, $fmax) = split /\|/, rpsql($node, "SELECT min(failures), max(failures) FROM qes_sign.work_items "
	  . "WHERE kind = 'archive' AND state = 'pending' AND request_id IN ($list)");
note("during the outage: $errors requests show an archive error; failures in a row "
	  . ($fmin // '') . ' to ' . ($fmax // ''));
cmp_ok($errors, '>', 0, 'the archive errors are visible in request_errors');
restart_s3($s3);
my $t_back = time;
note(sprintf('S3 back after %.1f s', $t_back - $t_stop));
# an archive whose four HEADs were answered just before the stop may commit right after it
my $late = rpsql($node, sprintf("SELECT count(*) FROM qes_sign.audit_log WHERE event = 'status_archiviert' "
	  . "AND request_id IN ($list) AND at > to_timestamp(%.3f) AND at < to_timestamp(%.3f)", $t_stop + 1, $t_back));
is($late, '0', 'no request reached archiviert while S3 was down');
cmp_ok($max_during, '<=', $before + 0, "archiviert count did not grow during the outage ($before before, max $max_during)")
  or note('(a commit already under way at the stop may land within the first second)');
ok(wait_until($node, "SELECT count(*) FROM qes_sign.signatur_anfragen WHERE status = 'archiviert' AND id IN ($list)",
		$n, 180), "all $n archiviert after S3 is back")
  or diag('status: ' . status_counts($node, \@ids));
my $t_done = time;
note(sprintf('archived %.1f s after S3 came back', $t_done - $t_back));

# no archiviert without its objects: the table's verified objects are in the bucket ...
my $b = bucket_check($node, $s3, \@ids);
is($b->{incomplete}, '0', 'every archiviert request has its 4 verified objects in archive_objects');
ok($b->{verified} == 4 * $n && !@{ $b->{missing} },
	"all $b->{verified} objects exist in the bucket with matching sha256 (boto3)")
  or diag("missing/different: @{$b->{missing}}[0..4]");
is(scalar(@{ $b->{stray} }), 0, 'no stray object in the bucket') or diag("stray: @{$b->{stray}}[0..4]");
is(scalar(@{ $b->{half} }), 0, 'no half-written object (content sha256 = x-amz-meta-sha256 for every object)')
  or diag("half: @{$b->{half}}[0..4]");
# ... and each was verified (HEAD) no later than its request became archiviert
my $early = rpsql($node, "SELECT count(*) FROM qes_sign.audit_log l JOIN qes_sign.archive_objects o "
	  . "ON o.request_id = l.request_id WHERE l.event = 'status_archiviert' AND l.request_id IN ($list) "
	  . "AND (o.verified_at IS NULL OR o.verified_at > l.at)");
is($early, '0', 'no object verified after its request became archiviert');
# the S3 server's own log: each object was stored with these bytes (a 2xx PUT with its sha256)
my %db = map { my @c = split /\|/; ($c[0] => $c[1]) } grep { length } split /\n/,
  rpsql($node, "SELECT key, encode(sha256, 'hex') FROM qes_sign.archive_objects WHERE request_id IN ($list)");
my %put;
for my $r (s3_log($s3, sub { $_[0]{method} eq 'PUT' && $_[0]{status} =~ /^2/ }))
{
	(my $k = $r->{path}) =~ s{^/\Q$s3->{bucket}\E/}{};
	$k =~ s/%([0-9A-Fa-f]{2})/chr(hex($1))/ge;
	$put{$k}{ $r->{body_sha256} // '' } = 1;
}
my @noput = grep { !$put{$_}{ $db{$_} } } sort keys %db;
is(scalar(@noput), 0, 'the S3 server logged a successful PUT of exactly these bytes for every object')
  or diag("no matching PUT: @noput[0..4]");
is(rpsql($node, 'SELECT ok FROM qes_sign.verify_audit_chain()'), 't', 'audit chain intact');
creates_once_ok($d, \@ids);
my ($deaths, $reinit, $panic) = log_deaths($node);
is(scalar(@$deaths) + $panic, 0, 'no process terminated by a signal, no PANIC');

my $archived = count_where($node, "status = 'archiviert' AND id IN ($list)");
my ($max) = creates_per_request($d, \@ids);
counts_line('r03_s3_outage',
	requests => $n,
	archived => $archived,
	created_at_skribble_max_per_request => $max,
	lost => $n - $archived,
	archived_before_outage => $before,
	archived_during_outage => $late,
	outage_seconds => sprintf('%.0f', $t_back - $t_stop),
	archive_errors_seen => $errors,
	objects_verified => $b->{verified},
	objects_missing => scalar(@{ $b->{missing} }),
	objects_stray => scalar(@{ $b->{stray} }),
	objects_half_written => scalar(@{ $b->{half} }),
	faults_injected => 1,
	worker_kills => 0,
	server_crashes => scalar(@$deaths) + $panic,
	seconds => sprintf('%.0f', time - $t0));

$node->stop;
done_testing();
