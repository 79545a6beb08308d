# The S3 server of the archive tests (test/s3/server.js) checked on its own,
# so that what 005 and 006 conclude from it holds: it verifies AWS Signature
# V4 (a third signer, written here in Perl, next to libcurl and boto3), it
# refuses what real S3 refuses (wrong secret, changed header, anonymous,
# payload or digest mismatch, malformed object lock), it logs each request,
# keeps its objects across a restart on the same port, and injects 5xx.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::RealBin/../perl";
use QesTest;
use PostgreSQL::Test::Utils;
use Test::More;
use HTTP::Tiny;
use POSIX qw(strftime);
use Digest::SHA qw(sha256_hex sha256 hmac_sha256 hmac_sha256_hex);
use Digest::MD5 qw(md5);
use MIME::Base64 qw(encode_base64);

my $s3   = start_s3();
my $http = HTTP::Tiny->new(timeout => 10, keep_alive => 0);
my $body = "%PDF-1.4\n% archive test object\n%%EOF\n";

# put(key, body, %o): a PUT signed with SigV4 here; o: headers (signed),
# after (headers changed after signing), secret, access, payload_hash,
# unsigned => 1.  Returns (status, S3 error code).
sub put
{
	my ($key, $data, %o) = @_;
	my $path = "/$s3->{bucket}/$key";
	my %h = %{ $o{headers} // {} };
	unless ($o{unsigned})
	{
		my $now = strftime('%Y%m%dT%H%M%SZ', gmtime);
		my $day = substr($now, 0, 8);
		$h{host} = "127.0.0.1:$s3->{port}";
		$h{'x-amz-date'} = $now;
		$h{'x-amz-content-sha256'} = $o{payload_hash} // sha256_hex($data) unless $o{no_payload_hash};
		my @names = sort keys %h;
		my $canonical = join("\n", 'PUT', $path, '', (map { "$_:$h{$_}" } @names), '',
			join(';', @names), $h{'x-amz-content-sha256'} // 'UNSIGNED-PAYLOAD');
		my $scope = "$day/us-east-1/s3/aws4_request";
		my $k = hmac_sha256($day, 'AWS4' . ($o{secret} // $s3->{secret_key}));
		$k = hmac_sha256($_, $k) for ('us-east-1', 's3', 'aws4_request');
		my $sig = hmac_sha256_hex(join("\n", 'AWS4-HMAC-SHA256', $now, $scope, sha256_hex($canonical)), $k);
		$h{authorization} = 'AWS4-HMAC-SHA256 Credential=' . ($o{access} // $s3->{access_key})
		  . "/$scope, SignedHeaders=" . join(';', @names) . ", Signature=$sig";
		delete $h{host};    # HTTP::Tiny sends the same Host itself
	}
	%h = (%h, %{ $o{after} // {} });
	my $res = $http->request('PUT', "$s3->{url}$path", { headers => \%h, content => $o{send} // $data });
	my ($code) = ($res->{content} // '') =~ m{<Code>([^<]+)</Code>};
	return ($res->{status}, $code // '');
}

sub md5_b64 { return encode_base64(md5($_[0]), ''); }
sub sha_b64 { return encode_base64(sha256($_[0]), ''); }
my $future = strftime('%Y-%m-%dT00:00:00Z', gmtime(time + 400 * 86400));
my $past   = strftime('%Y-%m-%dT00:00:00Z', gmtime(time - 86400));

scenario 'SigV4: a correct signature is accepted, anything else refused' => sub {
	is_deeply([ put('t/ok.pdf', $body, headers => { 'content-type' => 'application/pdf',
					'x-amz-meta-sha256' => sha256_hex($body) }) ], [ 200, '' ], 'signed PUT: 200');
	my $got = s3_check($s3, 'get', 't/ok.pdf');
	is($got->{sha256}, sha256_hex($body), 'boto3 reads the same bytes');
	is($got->{metadata}{sha256}, sha256_hex($body), 'with the x-amz-meta-sha256 metadata');
	is($got->{content_type}, 'application/pdf', 'and the content type');
	is_deeply([ put('t/x', $body, secret => 'wrong') ], [ 403, 'SignatureDoesNotMatch' ], 'wrong secret: 403 SignatureDoesNotMatch');
	is_deeply([ put('t/x', $body, headers => { 'x-amz-meta-sha256' => 'a' }, after => { 'x-amz-meta-sha256' => 'b' }) ],
		[ 403, 'SignatureDoesNotMatch' ], 'a signed header changed after signing: 403');
	is_deeply([ put('t/x', $body, access => 'nobody') ], [ 403, 'InvalidAccessKeyId' ], 'unknown access key: 403 InvalidAccessKeyId');
	is_deeply([ put('t/x', $body, access => 'S3RVER', secret => 'S3RVER') ], [ 403, 'InvalidAccessKeyId' ],
		"s3rver's built-in S3RVER key is revoked");
	is_deeply([ put('t/x', $body, unsigned => 1) ], [ 403, 'AccessDenied' ], 'anonymous PUT: 403 AccessDenied');
	is($http->get("$s3->{url}/$s3->{bucket}/t/ok.pdf")->{status}, 403, 'anonymous GET: 403');
	is(s3_check($s3, secret => 'wrong', 'head', 't/ok.pdf')->{error}{status}, 403, 'boto3 with a wrong secret: 403');
	is_deeply([ put('t/x', $body, no_payload_hash => 1) ], [ 400, 'InvalidRequest' ],
		'no x-amz-content-sha256: 400 InvalidRequest');
	is(s3_check($s3, 'head', 't/x')->{error}{status}, 404, 'none of the refused PUTs stored anything');
};

scenario 'digests: payload hash, Content-MD5, x-amz-checksum-sha256' => sub {
	is_deeply([ put('t/d', $body, payload_hash => sha256_hex('other')) ], [ 400, 'XAmzContentSHA256Mismatch' ],
		'x-amz-content-sha256 of other bytes (signed): 400 XAmzContentSHA256Mismatch');
	is_deeply([ put('t/d', $body, send => "$body ") ], [ 400, 'XAmzContentSHA256Mismatch' ],
		'body changed after signing: 400');
	is_deeply([ put('t/d', $body, headers => { 'content-md5' => md5_b64('other') }) ], [ 400, 'BadDigest' ],
		'wrong Content-MD5: 400 BadDigest');
	is_deeply([ put('t/d', $body, headers => { 'content-md5' => 'xyz' }) ], [ 400, 'InvalidDigest' ],
		'malformed Content-MD5: 400 InvalidDigest');
	is_deeply([ put('t/d', $body, headers => { 'x-amz-checksum-sha256' => sha_b64('other') }) ], [ 400, 'BadDigest' ],
		'wrong x-amz-checksum-sha256: 400 BadDigest');
	is_deeply([ put('t/d', $body, headers => { 'content-md5' => md5_b64($body), 'x-amz-checksum-sha256' => sha_b64($body) }) ],
		[ 200, '' ], 'all digests right: 200');
};

scenario 'object lock headers' => sub {
	my %ok = ('content-md5' => md5_b64($body));
	is_deeply([ put('t/l', $body, headers => { %ok, 'x-amz-object-lock-mode' => 'COMPLIANCE',
					'x-amz-object-lock-retain-until-date' => $future }) ], [ 200, '' ], "COMPLIANCE until $future: 200");
	is_deeply([ put('t/l', $body, headers => { %ok, 'x-amz-object-lock-mode' => 'GOVERNANCE',
					'x-amz-object-lock-retain-until-date' => $future }) ], [ 200, '' ], 'GOVERNANCE: 200');
	is_deeply([ put('t/l', $body, headers => { %ok, 'x-amz-object-lock-mode' => 'COMPLIANCE' }) ],
		[ 400, 'InvalidArgument' ], 'mode without a date: 400');
	is_deeply([ put('t/l', $body, headers => { %ok, 'x-amz-object-lock-retain-until-date' => $future }) ],
		[ 400, 'InvalidArgument' ], 'date without a mode: 400');
	is_deeply([ put('t/l', $body, headers => { %ok, 'x-amz-object-lock-mode' => 'compliance',
					'x-amz-object-lock-retain-until-date' => $future }) ], [ 400, 'InvalidArgument' ], 'lower-case mode: 400');
	is_deeply([ put('t/l', $body, headers => { %ok, 'x-amz-object-lock-mode' => 'COMPLIANCE',
					'x-amz-object-lock-retain-until-date' => $past }) ], [ 400, 'InvalidArgument' ], 'a date in the past: 400');
	is_deeply([ put('t/l', $body, headers => { %ok, 'x-amz-object-lock-mode' => 'COMPLIANCE',
					'x-amz-object-lock-retain-until-date' => '2099-12-31' }) ], [ 400, 'InvalidArgument' ],
		'a date without a time: 400');
	is_deeply([ put('t/l', $body, headers => { 'x-amz-object-lock-mode' => 'COMPLIANCE',
					'x-amz-object-lock-retain-until-date' => $future }) ], [ 400, 'InvalidRequest' ],
		'lock without Content-MD5 or checksum: 400 InvalidRequest');
};

scenario 'the capture log, restart on the same port, injected faults' => sub {
	my @log = s3_log($s3, sub { $_[0]{method} eq 'PUT' && $_[0]{path} eq '/archive/t/l' && $_[0]{status} == 200 });
	is(scalar(@log), 2, 'the log has the two accepted lock PUTs');
	is($log[0]{headers}{'x-amz-object-lock-mode'}, 'COMPLIANCE', 'with their headers');
	is($log[0]{body_sha256}, sha256_hex($body), 'and the SHA-256 of their bodies');
	my $port = $s3->{port};
	stop_s3($s3);
	is(s3_check($s3, 'head', 't/ok.pdf')->{error}{status}, undef, 'stopped: no answer');
	restart_s3($s3);
	is($s3->{port}, $port, 'restarted on the same port');
	is(s3_check($s3, 'get', 't/ok.pdf')->{sha256}, sha256_hex($body), 'the objects are still there');
	s3_ctl($s3, 'faults', { status => 503, count => 2, methods => ['PUT'] });
	is((put('t/f', $body))[0], 503, 'injected 503');
	is((put('t/f', $body))[0], 503, 'injected 503 again');
	is((put('t/f', $body))[0], 200, 'then through');
	is(s3_check($s3, 'head', 't/ok.pdf')->{size}, length($body), 'other methods were not affected');
	is(s3_ctl($s3, 'stats')->{faults_injected}, 2, 'stats: two faults injected');
};

done_testing();
