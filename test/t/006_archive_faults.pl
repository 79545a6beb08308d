# The archive when S3 fails: a wrong secret (403 SignatureDoesNotMatch from a
# server that checks SigV4) keeps the request vollstaendig with the error in
# request_errors until the secret is fixed and the configuration reloaded;
# injected 5xx answers are retried; the S3 server stopped for 30 s while 50
# requests complete: all of them are archived once it is back, none lost.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::RealBin/../perl";
use QesTest;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

my $d    = start_double();
my $s3   = start_s3();
my $node = qes_node('archive_faults', double => $d, s3 => $s3,
	conf => { 'qes_sign.retry_max_delay' => "'2s'", max_connections => 60 });

my $first;    # the first request archived here

sub one { my ($sql) = @_; return $node->safe_psql('postgres', $sql); }

# archived_ok(ids, name): every request has its four objects verified, and the
# bucket (read with boto3) holds them with matching SHA-256.
sub archived_ok
{
	my ($ids, $name) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my %db = map { $_->[0] => $_->[1] } query_list($node,
		"SELECT key, encode(sha256, 'hex') FROM qes_sign.archive_objects WHERE verified_at IS NOT NULL "
		  . 'AND request_id IN (' . in_list(@$ids) . ')');
	my %bucket = map { $_->{key} => $_ } @{ s3_check($s3, 'sums', 'hv-test/')->{objects} };
	my @bad = grep { !$bucket{$_} || $bucket{$_}{sha256} ne $db{$_} || ($bucket{$_}{metadata_sha256} // '') ne $db{$_} }
	  sort keys %db;
	ok(keys(%db) == 4 * @$ids && !@bad, $name)
	  or diag(sprintf('%d verified objects for %d requests; missing or different in the bucket: %s',
			scalar(keys %db), scalar(@$ids), join(' ', @bad[0 .. ($#bad < 4 ? $#bad : 4)])));
	return;
}

scenario 'wrong S3 secret: stays vollstaendig, error visible, archived after the fix and a reload' => sub {
	one("ALTER SYSTEM SET qes_sign.s3_secret_key = 'a-wrong-secret'");
	one('SELECT pg_reload_conf()');
	ok(wait_until($node, 'SHOW qes_sign.s3_secret_key', 'a-wrong-secret', 10), 'the wrong secret is in force');
	my ($id) = complete_requests($d, $node, 1);
	$first = $id;
	all_status_ok($node, [$id], 'vollstaendig', 30, 'the request completes');
	ok(wait_until($node, "SELECT count(*) FROM qes_sign.request_errors WHERE request_id = '$id' AND kind = 'archive'",
			'1', 30), 'request_errors shows the archive error');
	my $err = one("SELECT last_error FROM qes_sign.request_errors WHERE request_id = '$id'");
	like($err, qr/403|SignatureDoesNotMatch/, "the error says what S3 answered: $err");
	my @refused = s3_log($s3, sub { $_[0]{path} =~ m{/\Q$id\E/} && $_[0]{status} == 403 });
	ok(@refused, 'the S3 server refused the signature (' . scalar(@refused) . ' requests with 403)');
	is($refused[0]{error} // '', 'SignatureDoesNotMatch', 'refused as SignatureDoesNotMatch') if @refused;
	sleep 1.5;
	is(one("SELECT status FROM qes_sign.signatur_anfragen WHERE id = '$id'"), 'vollstaendig',
		'still vollstaendig while the secret is wrong');
	is(one("SELECT count(*) FROM qes_sign.archive_objects WHERE request_id = '$id' AND verified_at IS NOT NULL"), '0',
		'no archive object recorded as verified');
	is_deeply(s3_check($s3, 'list', "hv-test/")->{objects}, [], 'nothing stored in the bucket');

	one('ALTER SYSTEM RESET qes_sign.s3_secret_key');
	one('SELECT pg_reload_conf()');
	all_status_ok($node, [$id], 'archiviert', 30, 'archiviert after the secret is fixed and reloaded');
	archived_ok([$id], 'its four objects in the bucket, digests matching');
};

scenario 'S3 answers 503, then 500: retried, archived once it answers again' => sub {
	s3_ctl($s3, 'faults', { status => 503 });
	my ($id) = complete_requests($d, $node, 1);
	ok(wait_until($node, "SELECT last_error ~ '503' FROM qes_sign.request_errors WHERE request_id = '$id'", 't', 30),
		'the 503 is visible in request_errors');
	s3_ctl($s3, 'faults', { status => 500 });
	ok(wait_until($node, "SELECT last_error ~ '500' FROM qes_sign.request_errors WHERE request_id = '$id'", 't', 30),
		'then the 500');
	is(one("SELECT status FROM qes_sign.signatur_anfragen WHERE id = '$id'"), 'vollstaendig', 'still vollstaendig');
	s3_ctl($s3, 'faults', {});
	cmp_ok(s3_ctl($s3, 'stats')->{faults_injected}, '>=', 2, '5xx answers given');
	all_status_ok($node, [$id], 'archiviert', 30, 'archiviert once S3 answers again');
	archived_ok([$id], 'its four objects in the bucket, digests matching');
};

scenario 'S3 stopped for 30 s while 50 requests complete: all archived, none lost' => sub {
	stop_s3($s3);
	my $t0 = time;
	my @ids = complete_requests($d, $node, 50);
	all_status_ok($node, \@ids, 'vollstaendig', 60, '50 requests vollstaendig while S3 is down');
	ok(wait_until($node, 'SELECT count(*) FROM qes_sign.request_errors WHERE kind = \'archive\' AND request_id IN ('
			  . in_list(@ids) . ')', '50', 30), 'request_errors shows the archive error of all 50');
	note('e.g. ' . one('SELECT last_error FROM qes_sign.request_errors WHERE request_id IN (' . in_list(@ids) . ') LIMIT 1'));
	is(one("SELECT count(*) FROM qes_sign.signatur_anfragen WHERE status = 'archiviert' AND id IN (" . in_list(@ids) . ')'),
		'0', 'none archived while S3 is down');
	my ($err, $out) = ('', '');
	my $rc = $node->psql('postgres', "SELECT qes_sign.download('$first')", stdout => \$out, stderr => \$err);
	ok($rc != 0 && $out eq '', 'download while S3 is down fails, no bytes');
	like($err, qr{hv-test/\d{4}/\Q$first\E/signed\.pdf}, 'the error names the object') or diag($err);
	my $left = 30 - (time - $t0);
	note(sprintf('S3 down for %.1f s so far; waiting %.1f s more', time - $t0, $left));
	sleep $left if $left > 0;
	my ($min, $max) = split /\|/, one("SELECT min(failures), max(failures) FROM qes_sign.work_items "
		  . "WHERE kind = 'archive' AND request_id IN (" . in_list(@ids) . ')');
	note("failures in a row of the archive items during the outage: $min to $max");
	cmp_ok($min, '>', 1, 'archiving was retried during the outage');
	cmp_ok($max, '<', 45, 'with backoff: fewer than one retry a second with retry_max_delay 2s');
	restart_s3($s3);
	my $t1 = time;
	all_status_ok($node, \@ids, 'archiviert', 60, 'all 50 archiviert after S3 is back');
	note(sprintf('archived %.1f s after S3 came back', time - $t1));
	archived_ok(\@ids, 'their 200 objects in the bucket, digests matching');
	is(one("SELECT count(*) FROM qes_sign.work_items WHERE kind = 'archive' AND state <> 'done' AND request_id IN ("
			  . in_list(@ids) . ')'), '0', 'no archive work item left failed or pending');
	is(one('SELECT ok FROM qes_sign.verify_audit_chain()'), 't', 'audit chain intact');
};

$node->stop;
done_testing();
