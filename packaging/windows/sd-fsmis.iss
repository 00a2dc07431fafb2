; Inno Setup script for SD-FSMIS desktop (Windows x64). Build on Windows, after the bundle:
;
;   bash packaging/build.sh          (or: .venv\Scripts\python -m PyInstaller --noconfirm --distpath dist
;                                          --workpath build\pyinstaller packaging\sd-fsmis.spec)
;   "C:\Program Files (x86)\Inno Setup 6\ISCC.exe" /DAppVersion=0.1.0 packaging\windows\sd-fsmis.iss
;
; Output: dist\installer\sd-fsmis-<version>-windows-x64.exe plus .bin slices (DiskSpanning: torch makes the
; bundle larger than the 2 GB a single setup file can hold); ship the .exe and the .bin files together.
; Paths below are relative to this script's folder (packaging\windows). Needs Inno Setup 6.3 or newer
; (x64compatible). The bundle is the one PyInstaller built on this Windows machine, with its torch (a CUDA
; build of torch gives the GPU installer).

#ifndef AppVersion
  #define AppVersion "0.1.0"
#endif
#define AppName "SD-FSMIS"
#define AppExe "sd-fsmis-gui.exe"
#define AppCli "sd-fsmis.exe"
#define BundleDir "..\..\dist\sd-fsmis"
#define ProgId "SDFSMIS.Study"

[Setup]
; AppId identifies the installation for upgrades and uninstall: never change it
AppId={{6A0E3E51-8C3B-4C55-9B7E-3F1E5C2D9A41}
AppName={#AppName}
AppVersion={#AppVersion}
AppVerName={#AppName} {#AppVersion}
AppPublisher=SD-FSMIS desktop team
AppComments=Few-shot medical image segmentation with Stable Diffusion
DefaultDirName={autopf}\{#AppName}
DefaultGroupName={#AppName}
DisableProgramGroupPage=yes
; per-user install without administrator rights unless the user chooses "for all users"
PrivilegesRequired=lowest
PrivilegesRequiredOverridesAllowed=dialog
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
MinVersion=10.0
OutputDir=..\..\dist\installer
OutputBaseFilename=sd-fsmis-{#AppVersion}-windows-x64
SetupIconFile=..\..\resources\sd-fsmis.ico
UninstallDisplayIcon={app}\{#AppExe}
UninstallDisplayName={#AppName} {#AppVersion}
WizardStyle=modern
Compression=lzma2/max
; solid compression over gigabytes of DLLs needs a lot of memory and gains little: off
SolidCompression=no
; torch bundles exceed the 2 GB limit of a single setup file: spread the data over .bin slices
DiskSpanning=yes
DiskSliceSize=max
ChangesAssociations=yes
CloseApplications=yes

[Languages]
Name: "english"; MessagesFile: "compiler:Default.isl"

[Tasks]
Name: "desktopicon"; Description: "{cm:CreateDesktopIcon}"; GroupDescription: "{cm:AdditionalIcons}"
Name: "assocnifti"; Description: "Open NIfTI images (.nii) with {#AppName}"; GroupDescription: "File types:"
Name: "assocdicom"; Description: "Open DICOM files (.dcm) with {#AppName}"; GroupDescription: "File types:"; Flags: unchecked

[InstallDelete]
; an upgrade replaces the whole bundle (stale DLLs of an older torch must not stay next to the new ones)
Type: filesandordirs; Name: "{app}\_internal"

[Files]
Source: "{#BundleDir}\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs

[Icons]
Name: "{autoprograms}\{#AppName}"; Filename: "{app}\{#AppExe}"; WorkingDir: "{userdocs}"; Comment: "Few-shot medical image segmentation"
; the self-test in a console window that stays open to show its result
Name: "{autoprograms}\{#AppName} self-test"; Filename: "{cmd}"; Parameters: "/k """"{app}\{#AppCli}"" --self-test"""; WorkingDir: "{userdocs}"; IconFilename: "{app}\{#AppCli}"
Name: "{autodesktop}\{#AppName}"; Filename: "{app}\{#AppExe}"; WorkingDir: "{userdocs}"; Tasks: desktopicon

[Registry]
; the document type, opened by the windowed launcher ("gui" takes the paths to open)
Root: HKA; Subkey: "Software\Classes\{#ProgId}"; ValueType: string; ValueName: ""; ValueData: "Medical image study"; Flags: uninsdeletekey
Root: HKA; Subkey: "Software\Classes\{#ProgId}\DefaultIcon"; ValueType: string; ValueName: ""; ValueData: "{app}\{#AppExe},0"
Root: HKA; Subkey: "Software\Classes\{#ProgId}\shell\open\command"; ValueType: string; ValueName: ""; ValueData: """{app}\{#AppExe}"" gui ""%1"""
Root: HKA; Subkey: "Software\Classes\Applications\{#AppExe}"; ValueType: string; ValueName: "FriendlyAppName"; ValueData: "{#AppName}"; Flags: uninsdeletekey
Root: HKA; Subkey: "Software\Classes\Applications\{#AppExe}\SupportedTypes"; ValueType: string; ValueName: ".nii"; ValueData: ""
Root: HKA; Subkey: "Software\Classes\Applications\{#AppExe}\SupportedTypes"; ValueType: string; ValueName: ".gz"; ValueData: ""
Root: HKA; Subkey: "Software\Classes\Applications\{#AppExe}\SupportedTypes"; ValueType: string; ValueName: ".dcm"; ValueData: ""
; .nii (and .dcm when chosen): SD-FSMIS becomes the default program
Root: HKA; Subkey: "Software\Classes\.nii"; ValueType: string; ValueName: ""; ValueData: "{#ProgId}"; Flags: uninsdeletevalue; Tasks: assocnifti
Root: HKA; Subkey: "Software\Classes\.dcm"; ValueType: string; ValueName: ""; ValueData: "{#ProgId}"; Flags: uninsdeletevalue; Tasks: assocdicom
; Windows sees only the last extension: .nii.gz is ".gz". Taking over every .gz file would be wrong, so
; SD-FSMIS is only offered in "Open with" for .gz (and .nii, .dcm) without becoming their default.
Root: HKA; Subkey: "Software\Classes\.nii\OpenWithProgids"; ValueType: string; ValueName: "{#ProgId}"; ValueData: ""; Flags: uninsdeletevalue
Root: HKA; Subkey: "Software\Classes\.gz\OpenWithProgids"; ValueType: string; ValueName: "{#ProgId}"; ValueData: ""; Flags: uninsdeletevalue
Root: HKA; Subkey: "Software\Classes\.dcm\OpenWithProgids"; ValueType: string; ValueName: "{#ProgId}"; ValueData: ""; Flags: uninsdeletevalue

[Run]
Filename: "{app}\{#AppExe}"; Description: "{cm:LaunchProgram,{#AppName}}"; Flags: nowait postinstall skipifsilent
