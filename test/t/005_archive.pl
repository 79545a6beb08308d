# The archive (SPEC §7) against a real S3 server that checks AWS Signature V4
# (test/s3/server.js: s3rver behind a capturing front), read back with an
# independent client (test/s3/check.py, Debian's boto3): a completed request
# is archived with its four objects and their digests; the upload headers;
# download round trip and its audit entry; a corrupted object is refused by
# name; purge inside and after the retention period; object lock headers.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::RealBin/../perl";
use QesTest;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP qw(decode_json);
use Digest::SHA qw(sha256_hex);
use Digest::MD5 qw(md5_base64);
use MIME::Base64 qw(encode_base64 decode_base64);

my $d    = start_double();
my $s3   = start_s3();
my $node = qes_node('archive', double => $d, s3 => $s3, conf => { 'qes_sign.retry_max_delay' => "'1s'" });

sub one { my ($sql) = @_; return $node->safe_psql('postgres', $sql); }
sub slurp_bin { my ($f) = @_; open my $fh, '<:raw', $f or die "$f: $!"; local $/; return <$fh>; }

my %file  = (signed_pdf => 'signed.pdf', protocol_pdf => 'protocol.pdf', protocol_json => 'protocol.json',
	record_json => 'record.json');
my %ctype = (signed_pdf => 'application/pdf', protocol_pdf => 'application/pdf', protocol_json => 'application/json',
	record_json => 'application/json');
my @kinds = sort keys %file;
my $tmp   = PostgreSQL::Test::Utils::tempdir();

# archive_objects of a request: {kind => {bucket, key, sha256 (hex), size, content_type, verified}}
sub objects_of
{
	my ($id) = @_;
	return { map { $_->[0] => { bucket => $_->[1], key => $_->[2], sha256 => $_->[3], size => $_->[4],
				content_type => $_->[5], verified => $_->[6] } }
		  query_list($node, "SELECT kind, bucket, key, encode(sha256, 'hex'), size, content_type, "
			  . "verified_at IS NOT NULL FROM qes_sign.archive_objects WHERE request_id = '$id'") };
}

my ($id, $objs, $prefix);

scenario 'a completed request is archived: four objects, digests match' => sub {
	($id) = complete_requests($d, $node, 1);
	all_status_ok($node, [$id], 'archiviert', 60, 'the completed request reaches archiviert')
	  or die "not archived: " . one("SELECT string_agg(kind || ': ' || coalesce(last_error, ''), '; ') "
		  . "FROM qes_sign.work_items WHERE request_id = '$id'") . "\n";
	my $year = one("SELECT extract(year FROM completed_at)::int FROM qes_sign.signatur_anfragen WHERE id = '$id'");
	$prefix = "hv-test/$year/$id/";
	$objs = objects_of($id);
	is_deeply([ sort keys %$objs ], \@kinds, 'archive_objects: signed_pdf, protocol_pdf, protocol_json, record_json');
	my $listed = s3_check($s3, 'sums', $prefix)->{objects};
	is_deeply([ sort map { $_->{key} } @$listed ], [ sort map { "$prefix$_" } values %file ],
		"the bucket holds exactly the four keys under $prefix");
	my %at = map { $_->{key} => $_ } @$listed;
	for my $k (@kinds)
	{
		my $o = $objs->{$k};
		is($o->{key}, "$prefix$file{$k}", "$k: key $file{$k}");
		is($o->{bucket}, 'archive', "$k: bucket");
		is($o->{verified}, 't', "$k: verified_at set");
		is($o->{content_type}, $ctype{$k}, "$k: archive_objects.content_type $ctype{$k}");
		my $got = $at{ $o->{key} } // {};
		is($got->{sha256}, $o->{sha256}, "$k: SHA-256 of the stored bytes = archive_objects.sha256");
		is($got->{metadata_sha256}, $o->{sha256}, "$k: x-amz-meta-sha256 = archive_objects.sha256");
		is($got->{size}, $o->{size}, "$k: size");
		is($got->{content_type}, $ctype{$k}, "$k: Content-Type in the bucket");
	}

	# the contents: the document Skribble signed, the protocol, the record
	my $sp = s3_check($s3, 'get', "${prefix}signed.pdf", '--out', "$tmp/signed.pdf");
	like(slurp_bin("$tmp/signed.pdf"), qr/^%PDF-/, 'signed.pdf is a PDF');
	my $sr = ctl_get($d, 'signature-requests/' . one("SELECT provider_id FROM qes_sign.signatur_anfragen WHERE id = '$id'"));
	is(one("SELECT document_id FROM qes_sign.signatur_anfragen WHERE id = '$id'"), $sr->{document_id},
		"the archived request keeps Skribble's final document id");
	s3_check($s3, 'get', "${prefix}protocol.pdf", '--out', "$tmp/protocol.pdf");
	like(slurp_bin("$tmp/protocol.pdf"), qr/^%PDF-/, 'protocol.pdf is a PDF');
	s3_check($s3, 'get', "${prefix}protocol.json", '--out', "$tmp/protocol.json");
	my $pj = eval { decode_json(slurp_bin("$tmp/protocol.json")) };
	ok($pj, 'protocol.json is JSON');
	like(slurp_bin("$tmp/protocol.json"), qr/signer2\@example\.org/, "protocol.json is Skribble's protocol (names the signers)");
	s3_check($s3, 'get', "${prefix}record.json", '--out', "$tmp/record.json");
	my $rtext = slurp_bin("$tmp/record.json");
	ok(eval { decode_json($rtext) }, 'record.json is JSON');
	like($rtext, qr/\Q$id\E/, 'record.json names the request');
	like($rtext, qr/signer1\@example\.org/, 'record.json lists the signers');
	like($rtext, qr/\Q$objs->{signed_pdf}{sha256}\E/i, "record.json carries the signed PDF's SHA-256 (hex)");

	my @ev = @{ events($node, $id) };
	ok((grep { $_ eq 'status_archiviert' } @ev), 'audit: status_archiviert');
	is(one("SELECT archived_at IS NOT NULL FROM qes_sign.signatur_anfragen WHERE id = '$id'"), 't', 'archived_at set');
};

scenario 'the uploads: SigV4, digests, metadata, verified by the PUT answer, no lock headers by default' => sub {
	die "no archived request\n" unless $prefix;
	my @reqs = s3_log($s3, sub { $_[0]{path} =~ m{^/archive/\Q$prefix\E} });
	for my $k (@kinds)
	{
		my $path = "/archive/$objs->{$k}{key}";
		my @puts = grep { $_->{method} eq 'PUT' && $_->{path} eq $path && $_->{status} == 200 } @reqs;
		is(scalar(@puts), 1, "$k: stored with one PUT") or next;
		my $h = $puts[0]{headers};
		my $body_sha = $puts[0]{body_sha256};
		is($body_sha, $objs->{$k}{sha256}, "$k: the PUT body's SHA-256 = archive_objects.sha256");
		like($h->{authorization} // '',
			qr{^AWS4-HMAC-SHA256 Credential=qes-test-access/\d{8}/us-east-1/s3/aws4_request, ?SignedHeaders=[^,]*x-amz-content-sha256},
			"$k: signed with SigV4, x-amz-content-sha256 signed");
		is($h->{'x-amz-content-sha256'}, $body_sha, "$k: x-amz-content-sha256 = hex SHA-256 of the body");
		is($h->{'x-amz-meta-sha256'}, $body_sha, "$k: x-amz-meta-sha256 (hex)");
		is($h->{'x-amz-checksum-sha256'}, encode_base64(pack('H*', $body_sha), ''), "$k: x-amz-checksum-sha256 (base64)");
		ok($h->{'content-md5'}, "$k: Content-MD5 sent (the server checked it)");
		is($h->{'content-type'}, $ctype{$k}, "$k: Content-Type $ctype{$k}");
		ok(!exists $h->{'x-amz-object-lock-mode'} && !exists $h->{'x-amz-object-lock-retain-until-date'},
			"$k: no object lock headers while qes_sign.s3_object_lock is off");
		# S3 checked Content-MD5 and the checksum on the PUT; its answer (the
		# ETag of a single PUT is the MD5) confirms the bytes: no HEAD
		is(scalar(grep { $_->{method} eq 'HEAD' && $_->{path} eq $path } @reqs), 0,
			"$k: no HEAD: the PUT's answer confirmed the digest");
		is($objs->{$k}{verified}, 't', "$k: verified");
	}
	my @bad = grep { $_->{status} >= 400 } @reqs;
	is(scalar(@bad), 0, 'no S3 request of the archive refused')
	  or diag(join("\n", map { "$_->{method} $_->{path} -> $_->{status} " . ($_->{error} // '') } @bad));
};

my $downloads = 0;
scenario 'download: bytes equal to what boto3 reads, audit entry downloaded' => sub {
	die "no archived request\n" unless $prefix;
	for my $k (@kinds)
	{
		s3_check($s3, 'get', $objs->{$k}{key}, '--out', "$tmp/$k");
		my $hex = one("SELECT encode(qes_sign.download('$id', '$k'), 'hex')");
		$downloads++;
		is($hex, unpack('H*', slurp_bin("$tmp/$k")), "download('$k') = the bytes in the bucket");
	}
	is(one("SELECT encode(qes_sign.download('$id'), 'hex')"), unpack('H*', slurp_bin("$tmp/signed_pdf")),
		'download(id) gives the signed PDF');
	$downloads++;
	is(one("SELECT count(*) FROM qes_sign.timeline('$id') WHERE event = 'downloaded'"), $downloads,
		"audit: one 'downloaded' entry per download ($downloads)");
	my $rc = $node->psql('postgres', "SELECT qes_sign.download('$id', 'nonsense')");
	isnt($rc, 0, 'download of an unknown kind fails');

	# the portal's role: its own tenant's request only (row-level security)
	$node->safe_psql('postgres', 'CREATE ROLE portal_dl LOGIN IN ROLE qes_sign_app; '
		  . "SELECT qes_sign.grant_tenant('portal_dl', 'hv-test')");
	my ($out, $err) = ('', '');
	$rc = $node->psql('postgres', "SET ROLE portal_dl; SET qes_sign.verwaltung = 'hv-test'; "
		  . "SELECT encode(sha256(qes_sign.download('$id')), 'hex')", stdout => \$out, stderr => \$err);
	is($out, $objs->{signed_pdf}{sha256}, "the portal role downloads its tenant's signed PDF") or diag($err);
	$downloads++ if $rc == 0;
	$rc = $node->psql('postgres', "SET ROLE portal_dl; SET qes_sign.verwaltung = 'hv-other'; "
		  . "SELECT qes_sign.download('$id')", stdout => \$out, stderr => \$err);
	isnt($rc, 0, "another tenant cannot download it");
	is(one("SELECT count(*) FROM qes_sign.timeline('$id') WHERE event = 'downloaded'"), $downloads,
		'audit: the refused download left no entry');
};

scenario 'a corrupted object: download fails and names it, never gives wrong bytes' => sub {
	die "no archived request\n" unless $prefix;
	my $key  = $objs->{signed_pdf}{key};
	my $good = slurp_bin("$tmp/signed_pdf");
	(my $bad = $good) =~ s/%%EOF/%%EOX/;
	$bad .= "% tampered\n" if $bad eq $good;
	open my $fh, '>:raw', "$tmp/bad.pdf" or die;
	print $fh $bad;
	close $fh;
	# bit rot the metadata does not show: the stored sha256 metadata stays the old one
	my $put = s3_check($s3, 'put', $key, "$tmp/bad.pdf", '--content-type', 'application/pdf',
		'--meta', "sha256=$objs->{signed_pdf}{sha256}");
	ok(!$put->{error}, 'signed.pdf overwritten in the bucket with boto3') or diag(explain $put);
	my ($out, $err) = ('', '');
	my $rc = $node->psql('postgres', "SELECT encode(qes_sign.download('$id', 'signed_pdf'), 'hex')",
		stdout => \$out, stderr => \$err);
	isnt($rc, 0, 'download of the corrupted object fails');
	is($out, '', 'no bytes returned');
	like($err, qr/\Q$key\E|signed\.pdf|signed_pdf/, 'the error names the object') or diag($err);
	my $bad_sha = sha256_hex($bad);
	unlike($err, qr/\Q$objs->{signed_pdf}{sha256}\E|\Q$bad_sha\E|\b\Q${\ length($bad)}\E bytes/,
		'the error reveals neither digest nor size') or diag($err);
	note("error: $err");
	is(one("SELECT encode(qes_sign.download('$id', 'record_json'), 'hex')"),
		unpack('H*', slurp_bin("$tmp/record_json")), 'the other objects still download');
	$downloads++;
	is(one("SELECT count(*) FROM qes_sign.timeline('$id') WHERE event = 'downloaded'"), $downloads,
		'the failed download left no downloaded entry');
	open $fh, '>:raw', "$tmp/good.pdf" or die;
	print $fh $good;
	close $fh;
	s3_check($s3, 'put', $key, "$tmp/good.pdf", '--content-type', 'application/pdf',
		'--meta', "sha256=$objs->{signed_pdf}{sha256}");
	is(one("SELECT encode(qes_sign.download('$id'), 'hex')"), unpack('H*', $good),
		'restored in the bucket: download works again');
};

scenario 'a tenant name with spaces, umlauts and reserved characters in the key' => sub {
	my $v = "HV Müller & Söhne (Nord) 100%+";
	my $pdf = unpack('H*', test_pdf());
	my $uid = one("SELECT qes_sign.create_request('$v', 'Mietvertrag', '\\x$pdf'::bytea, "
		  . "'[{\"first_name\": \"A\", \"last_name\": \"B\", \"email\": \"signer1\@example.org\"}]')");
	submitted_ok($node, [$uid]);
	is(sign_all($d, $node, [$uid]), 0, 'signed');
	all_status_ok($node, [$uid], 'archiviert', 60, 'archiviert (SigV4 over a percent-encoded key)')
	  or diag(one("SELECT string_agg(coalesce(last_error, ''), '; ') FROM qes_sign.work_items WHERE request_id = '$uid'"));
	my $year = one("SELECT extract(year FROM completed_at)::int FROM qes_sign.signatur_anfragen WHERE id = '$uid'");
	my $o = objects_of($uid);
	is($o->{record_json}{key}, "$v/$year/$uid/record.json", 'the key keeps the tenant name as it is');
	# read key by key: s3rver 4.0.4 cannot list such a prefix (its ListObjects
	# answers '&' as "&amp;" and its canonical query leaves '(' ')' unencoded)
	my @kinds_here = sort keys %$o;
	my @got = @{ s3_check($s3, 'sums', map { ('--key', $o->{$_}{key}) } @kinds_here)->{objects} };
	is(scalar(grep { defined $_->{sha256} } @got), 4, 'boto3 reads the four objects by their keys');
	is(join(' ', map { $_->{sha256} } @got), join(' ', map { $o->{$_}{sha256} } @kinds_here),
		'their digests match');
	is(one("SELECT encode(sha256(qes_sign.download('$uid', 'signed_pdf')), 'hex')"), $o->{signed_pdf}{sha256},
		'download works');
};

scenario 'tenant names with dot segments: objects stored under the keys recorded' => sub {
	# libcurl removes "." and ".." segments from a URL path unless told not
	# to: the PUT must still reach the key that archive_objects records,
	# and never another tenant's prefix (or create_request refuses the name)
	my $pdf = unpack('H*', test_pdf());
	my %id;
	for my $v ('.', '..', 'hv-a/../hv-b')
	{
		my ($out, $err) = ('', '');
		my $rc = $node->psql('postgres', "SELECT qes_sign.create_request('$v', 'Mietvertrag', '\\x$pdf'::bytea, "
			  . "'[{\"first_name\": \"A\", \"last_name\": \"B\", \"email\": \"signer1\@example.org\"}]')",
			stdout => \$out, stderr => \$err);
		if ($rc == 0) { $id{$v} = $out; }
		else { pass("tenant name '$v' refused: $err"); }
	}
	return unless %id;
	submitted_ok($node, [ values %id ]);
	is(sign_all($d, $node, [ values %id ]), 0, 'signed');
	wait_until($node, "SELECT count(*) FROM qes_sign.signatur_anfragen WHERE status = 'archiviert' AND id IN ("
		  . join(', ', map { "'$_'" } values %id) . ')', scalar(keys %id), 15);
	my %put;    # URL-decoded path of every stored PUT
	for (s3_log($s3, sub { $_[0]{method} eq 'PUT' && $_[0]{status} == 200 }))
	{
		(my $p = $_->{path}) =~ s/%([0-9A-Fa-f]{2})/chr(hex($1))/eg;
		$put{$p} = 1;
	}
	for my $v (sort keys %id)
	{
		is(one("SELECT status FROM qes_sign.signatur_anfragen WHERE id = '$id{$v}'"), 'archiviert',
			"tenant '$v': archiviert")
		  or diag(one("SELECT last_error FROM qes_sign.work_items WHERE kind = 'archive' AND request_id = '$id{$v}'"));
		my @keys = map { $_->[0] } query_list($node, "SELECT key FROM qes_sign.archive_objects WHERE request_id = '$id{$v}'");
		my @missing = grep { !$put{"/archive/$_"} } @keys;
		ok(!@missing, "tenant '$v': every recorded key was stored under that key")
		  or diag("recorded, never PUT as such: @missing\nPUT paths: "
			  . join(' ', grep { /\Q$id{$v}\E/ } sort keys %put));
	}
};

scenario 'purge: refused inside the retention period, done after it' => sub {
	die "no archived request\n" unless $prefix;
	my $until = one("SELECT retention_until FROM qes_sign.signatur_anfragen WHERE id = '$id'");
	like($until, qr/^\d{4}-\d\d-\d\d$/, "retention_until $until");
	cmp_ok($until, 'lt', '2037-01-02', 'the retention period ends before the test clock used below');
	my ($out, $err) = ('', '');
	my $rc = $node->psql('postgres', "SELECT qes_sign.purge('$id')", stdout => \$out, stderr => \$err);
	isnt($rc, 0, 'purge inside the retention period is refused');
	like($err, qr/retention|$until/i, 'the refusal names the retention period') or diag($err);
	is(scalar @{ s3_check($s3, 'list', $prefix)->{objects} }, 4, 'the four objects stay in the bucket');

	$node->safe_psql('postgres', 'CREATE ROLE portal_purge LOGIN IN ROLE qes_sign_app; '
		  . "SELECT qes_sign.grant_tenant('portal_purge', 'hv-test')");
	$rc = $node->psql('postgres', "SET ROLE portal_purge; SET qes_sign.verwaltung = 'hv-test'; "
		  . "SELECT qes_sign.purge('$id')", stderr => \$err);
	isnt($rc, 0, 'purge by the portal role (qes_sign_app) is refused');

	$rc = $node->psql('postgres', "SET qes_sign.test_clock = '2037-01-02 00:00+00'; SELECT qes_sign.purge('$id')",
		stdout => \$out, stderr => \$err);
	is($rc, 0, 'purge after the retention period (test_clock 2037-01-02)') or diag($err);
	is_deeply(s3_check($s3, 'list', $prefix)->{objects}, [], 'the objects are gone from the bucket');
	my @del = s3_log($s3, sub { $_[0]{method} eq 'DELETE' && $_[0]{path} =~ m{^/archive/\Q$prefix\E} });
	is(scalar(grep { $_->{status} == 204 || $_->{status} == 200 } @del), 4, 'four signed DELETEs');
	is(one("SELECT document IS NULL FROM qes_sign.signatur_anfragen WHERE id = '$id'"), 't', 'the document is deleted');
	is(one("SELECT count(*) FROM qes_sign.signers WHERE request_id = '$id' AND email LIKE '%\@example.org'"), '0',
		"the signers' personal data is deleted");
	ok((grep { /purge/ } @{ events($node, $id) }), 'audit: the purge is recorded');
	$rc = $node->psql('postgres', "SELECT qes_sign.download('$id')", stderr => \$err);
	isnt($rc, 0, 'a purged request cannot be downloaded');
	is(one('SELECT ok FROM qes_sign.verify_audit_chain()'), 't', 'audit chain intact');
};

scenario 'object lock compliance: COMPLIANCE mode, retain-until = retention date' => sub {
	one("ALTER SYSTEM SET qes_sign.s3_object_lock = 'compliance'");
	one('SELECT pg_reload_conf()');
	ok(wait_until($node, 'SHOW qes_sign.s3_object_lock', 'compliance', 10), 'qes_sign.s3_object_lock = compliance');
	my ($lid) = complete_requests($d, $node, 1);
	all_status_ok($node, [$lid], 'archiviert', 60, 'archived with object lock');
	my $until = one("SELECT retention_until FROM qes_sign.signatur_anfragen WHERE id = '$lid'");
	my @puts = s3_log($s3, sub { $_[0]{method} eq 'PUT' && $_[0]{path} =~ m{/\Q$lid\E/} && $_[0]{status} == 200 });
	is(scalar(@puts), 4, 'four PUTs of the locked request');
	for my $p (@puts)
	{
		my ($f) = $p->{path} =~ m{/([^/]+)$};
		is($p->{headers}{'x-amz-object-lock-mode'}, 'COMPLIANCE', "$f: x-amz-object-lock-mode COMPLIANCE");
		like($p->{headers}{'x-amz-object-lock-retain-until-date'} // '', qr/^\Q$until\ET\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)$/,
			"$f: x-amz-object-lock-retain-until-date = retention_until ($until)");
	}
	one('ALTER SYSTEM RESET qes_sign.s3_object_lock');
	one('SELECT pg_reload_conf()');
};

$node->stop;
done_testing();
