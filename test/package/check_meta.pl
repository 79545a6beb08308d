#!/usr/bin/perl
# test/package/check_meta.pl [META.json]: validates a PGXN META.json against
# the PGXN Meta Spec v1.0.0 (https://pgxn.org/meta/spec.txt), following the
# rules of PGXN's JSON schemas for v1 (required keys, Terms, SemVer versions,
# version ranges, licenses, prereq phases and relationships, resources, tags,
# no_index, meta-spec, custom keys x_*), then checks it against this tree:
# the files it names exist, provides.qes_sign.version is the control file's
# default_version, and the distribution version is debian/changelog's.
# Debian has no PGXN validator package (pgxnclient only installs from PGXN).
# Prints one line per error; exits 0 when valid.
use strict;
use warnings;
use JSON::PP;
use B ();
use File::Basename qw(dirname);

my $file = shift // 'META.json';
my $root = dirname($file);
my @errors;
sub err { push @errors, join('', @_) }

my $text = do { local $/; open my $fh, '<:raw', $file or die "$file: $!\n"; <$fh> };
my $meta = eval { JSON::PP->new->utf8->decode($text) };
if (!defined $meta) { print "$file: not valid JSON: $@"; exit 1 }
if (ref $meta ne 'HASH') { print "$file: not a JSON object\n"; exit 1 }

my $semver = qr/^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)
    (?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?
    (?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$/x;
my %licenses = map { $_ => 1 } qw(agpl_3 apache_1_1 apache_2_0 artistic_1 artistic_2
    bsd freebsd gfdl_1_2 gfdl_1_3 gpl_1 gpl_2 gpl_3 lgpl_2_1 lgpl_3_0 mit mozilla_1_0
    mozilla_1_1 openssl perl_5 postgresql qpl_1_0 ssleay sun zlib open_source
    restricted unrestricted unknown);
my $custom = qr/^[xX]_./;

sub is_str  { defined $_[0] && !ref $_[0] && !(B::svref_2object(\$_[0])->FLAGS & (B::SVp_IOK() | B::SVp_NOK())) }

sub str     { my ($v, $where) = @_; is_str($v) && length $v >= 1 or err("$where: must be a non-empty string"); }
sub term    { my ($v, $where) = @_;
              is_str($v) && $v =~ m{^[^/\\\s\p{Cntrl}]{2,}$} or err("$where: must be a Term (2+ characters, no slash, backslash, space or control character)"); }
sub version { my ($v, $where) = @_; is_str($v) && $v =~ $semver or err("$where: must be a SemVer version string, not ", $v // 'null'); }
sub uri     { my ($v, $where) = @_; is_str($v) && $v =~ m{^[a-zA-Z][a-zA-Z0-9+.-]*:\S+$} or err("$where: must be a URI"); }
sub path    { my ($v, $where) = @_;
              is_str($v) && length $v >= 2 && $v !~ m{^/|\\|(^|/)\.\.(/|$)} or err("$where: must be a relative Unix path");
              is_str($v) && !-e "$root/$v" and err("$where: $v does not exist in the distribution"); }
sub object  { my ($v, $where) = @_; ref $v eq 'HASH' or (err("$where: must be an object"), return 0); 1 }
sub keys_ok { my ($h, $where, @allowed) = @_;
              my %a = map { $_ => 1 } @allowed;
              $a{$_} || $_ =~ $custom or err("$where: unknown key \"$_\"") for sort keys %$h; }
sub version_range {
    my ($v, $where) = @_;
    return if defined $v && !ref $v && $v eq '0';   # 0 or "0": any version
    my $one = qr/(?:(?:[=!]=|[<>]=?)\s*)?(?:0|[1-9]\d*)\.(?:0|[1-9]\d*)\.(?:0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?/;
    is_str($v) && $v =~ /^$one(?:,\s*$one)*$/ or err("$where: must be a version range, not ", $v // 'null');
}

# required keys (spec 3.1: Required Fields)
for my $k (qw(name version abstract maintainer license provides meta-spec)) {
    exists $meta->{$k} or err("missing required key \"$k\"");
}
keys_ok($meta, 'top level', qw(name version abstract maintainer license provides meta-spec
    description generated_by tags no_index prereqs release_status resources));

term($meta->{name}, 'name') if exists $meta->{name};
version($meta->{version}, 'version') if exists $meta->{version};
str($meta->{abstract}, 'abstract') if exists $meta->{abstract};
str($meta->{description}, 'description') if exists $meta->{description};
str($meta->{generated_by}, 'generated_by') if exists $meta->{generated_by};

if (exists $meta->{maintainer}) {
    my $m = $meta->{maintainer};
    if (ref $m eq 'ARRAY') { @$m or err('maintainer: empty list'); str($m->[$_], "maintainer[$_]") for 0 .. $#$m }
    else { str($m, 'maintainer') }
}

if (exists $meta->{license}) {
    my $l = $meta->{license};
    if (ref $l eq 'ARRAY') { @$l or err('license: empty list'); $licenses{$_ // ''} or err("license: unknown license \"", $_ // 'null', '"') for @$l }
    elsif (ref $l eq 'HASH') { %$l or err('license: empty object'); uri($l->{$_}, "license.$_") for keys %$l }
    else { defined $l && $licenses{$l} or err('license: unknown license "', $l // 'null', '"') }
}

if (exists $meta->{provides} && object($meta->{provides}, 'provides')) {
    my $p = $meta->{provides};
    %$p or err('provides: must name at least one extension');
    for my $ext (sort keys %$p) {
        term($ext, "provides key \"$ext\"");
        object($p->{$ext}, "provides.$ext") or next;
        my $e = $p->{$ext};
        keys_ok($e, "provides.$ext", qw(file version abstract docfile));
        exists $e->{$_} or err("provides.$ext: missing required key \"$_\"") for qw(file version);
        path($e->{file}, "provides.$ext.file") if exists $e->{file};
        path($e->{docfile}, "provides.$ext.docfile") if exists $e->{docfile};
        version($e->{version}, "provides.$ext.version") if exists $e->{version};
        str($e->{abstract}, "provides.$ext.abstract") if exists $e->{abstract};
    }
}

if (exists $meta->{'meta-spec'} && object($meta->{'meta-spec'}, 'meta-spec')) {
    my $s = $meta->{'meta-spec'};
    keys_ok($s, 'meta-spec', qw(version url));
    is_str($s->{version}) && $s->{version} =~ /^1\.0\.\d+$/ or err('meta-spec.version: must be 1.0.x');
    !exists $s->{url} || ($s->{url} // '') =~ m{^https?://pgxn\.org/meta/spec\.txt$}
        or err('meta-spec.url: must be https://pgxn.org/meta/spec.txt');
}

if (exists $meta->{prereqs} && object($meta->{prereqs}, 'prereqs')) {
    my $p = $meta->{prereqs};
    keys_ok($p, 'prereqs', qw(configure build test runtime develop));
    for my $phase (grep { $_ !~ $custom } sort keys %$p) {
        object($p->{$phase}, "prereqs.$phase") or next;
        keys_ok($p->{$phase}, "prereqs.$phase", qw(requires recommends suggests conflicts));
        %{$p->{$phase}} or err("prereqs.$phase: empty");
        for my $rel (grep { $_ !~ $custom } sort keys %{$p->{$phase}}) {
            object($p->{$phase}{$rel}, "prereqs.$phase.$rel") or next;
            for my $dep (sort keys %{$p->{$phase}{$rel}}) {
                term($dep, "prereqs.$phase.$rel key \"$dep\"");
                version_range($p->{$phase}{$rel}{$dep}, "prereqs.$phase.$rel.$dep");
            }
        }
    }
}

if (exists $meta->{release_status}) {
    ($meta->{release_status} // '') =~ /^(stable|testing|unstable)$/
        or err('release_status: must be stable, testing or unstable');
}

if (exists $meta->{tags}) {
    my $t = $meta->{tags};
    if (ref $t eq 'ARRAY' && @$t) {
        for (0 .. $#$t) {
            is_str($t->[$_]) && $t->[$_] =~ m{^[^/\\\p{Cntrl}]{2,255}$}
                or err("tags[$_]: must be 2 to 255 characters without slash, backslash or control characters");
        }
    } else { err('tags: must be a non-empty list') }
}

if (exists $meta->{no_index} && object($meta->{no_index}, 'no_index')) {
    my $n = $meta->{no_index};
    keys_ok($n, 'no_index', qw(file directory));
    exists $n->{file} || exists $n->{directory} or err('no_index: needs file or directory');
    for my $k (grep { exists $n->{$_} } qw(file directory)) {
        my @list = ref $n->{$k} eq 'ARRAY' ? @{$n->{$k}} : ($n->{$k});
        @list or err("no_index.$k: empty list");
        path($list[$_], "no_index.$k\[$_]") for 0 .. $#list;
    }
}

if (exists $meta->{resources} && object($meta->{resources}, 'resources')) {
    my $r = $meta->{resources};
    %$r or err('resources: empty');
    keys_ok($r, 'resources', qw(homepage bugtracker repository));
    uri($r->{homepage}, 'resources.homepage') if exists $r->{homepage};
    if (exists $r->{bugtracker} && object($r->{bugtracker}, 'resources.bugtracker')) {
        keys_ok($r->{bugtracker}, 'resources.bugtracker', qw(web mailto));
        uri($r->{bugtracker}{web}, 'resources.bugtracker.web') if exists $r->{bugtracker}{web};
        ($r->{bugtracker}{mailto} // '') =~ /^[^@\s]+@[^@\s]+$/ or err('resources.bugtracker.mailto: must be an email address')
            if exists $r->{bugtracker}{mailto};
    }
    if (exists $r->{repository} && object($r->{repository}, 'resources.repository')) {
        keys_ok($r->{repository}, 'resources.repository', qw(url web type));
        uri($r->{repository}{$_}, "resources.repository.$_") for grep { exists $r->{repository}{$_} } qw(url web);
        !exists $r->{repository}{type} || ($r->{repository}{type} // '') =~ /^[a-z]+$/
            or err('resources.repository.type: must be a lower-case word');
    }
}

# this tree: the control file and the Debian changelog agree with META.json
if (open my $fh, '<', "$root/qes_sign.control") {
    my ($default) = map { /^\s*default_version\s*=\s*'([^']*)'/ ? $1 : () } <$fh>;
    my $want = defined $default ? ($default =~ /^\d+\.\d+$/ ? "$default.0" : $default) : '';
    my $got = ref $meta->{provides} eq 'HASH' && ref $meta->{provides}{qes_sign} eq 'HASH'
        ? $meta->{provides}{qes_sign}{version} // '' : '';
    $got eq $want or err("provides.qes_sign.version $got is not the control file's default_version ($want)");
}
if (open my $fh, '<', "$root/debian/changelog") {
    my ($deb) = (<$fh> =~ /\(([^)]+)\)/);
    $deb =~ s/-[^-]*$// if defined $deb;   # upstream part of a non-native version
    my $want = defined $deb && $deb =~ /^\d+\.\d+$/ ? "$deb.0" : $deb // '';
    ($meta->{version} // '') eq $want or err("version ", $meta->{version} // 'null', " is not debian/changelog's ($want)");
}

if (@errors) { print "$file: $_\n" for @errors; exit 1 }
print "$file: valid (PGXN Meta Spec 1.0.0; version $meta->{version}, provides ",
    join(', ', map { "$_ $meta->{provides}{$_}{version}" } sort keys %{$meta->{provides}}), ")\n";
exit 0;
